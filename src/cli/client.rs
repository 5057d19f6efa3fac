//! The CLI's HTTP client: one request helper that turns "nothing answers", API errors and
//! transport failures into [`CliError`]s with one clear line each.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use awc::body::SizedStream;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::CliError;
use crate::web::tls::{self, Fingerprint, Seen};

/// A connection to one node's API, over HTTP or HTTPS.
pub struct Client {
    /// Made at the first request, with what the TLS verifier saw (to explain a refused
    /// certificate): a build found up to date sends none, and the TLS set-up (the webpki roots)
    /// was ~3 % of that answer's time.
    http: std::cell::OnceCell<(awc::Client, Arc<Seen>)>,
    base: String,
    token: Option<String>,
    /// The fingerprint an https:// node's certificate must have (None: a known authority's).
    pin: Option<Fingerprint>,
    /// How long an ordinary request waits for the answer (`--timeout`).
    timeout: Duration,
}

/// `--timeout`'s default: a node answers an ordinary request in milliseconds, and one that took
/// the connection but never answers (stopped with SIGSTOP, or wedged) held a command 300 s.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
/// The wait for requests whose answer comes when their work is done, and for file transfers.
const WORK_TIMEOUT: Duration = Duration::from_secs(3600);

/// Requests answered when their work is done, which can take longer than an ordinary answer:
/// benchmarks and tests, a rescan, joining, leaving and removing (the mesh's records), a ledger
/// sync or verify (they grow with the ledger), adding a project (its files are read) and an
/// estimate.
fn answered_when_done(path: &str) -> bool {
    [
        "/api/node/benchmark",
        "/api/test/",
        "/api/node/scan",
        "/api/pool/join",
        "/api/pool/leave",
        "/api/pool/remove",
        "/api/ledger/sync",
        "/api/ledger/verify",
        "/api/projects",
        "/api/build/estimate",
    ]
    .iter()
    .any(|p| path.starts_with(p))
}

impl Client {
    pub fn new(base: String, token: Option<String>, pin: Option<Fingerprint>, timeout: Duration) -> Self {
        Client { http: std::cell::OnceCell::new(), base: base.trim_end_matches('/').to_string(), token, pin, timeout }
    }

    fn http(&self) -> &awc::Client {
        &self.http.get_or_init(|| tls::api_client(WORK_TIMEOUT, self.pin)).0
    }

    /// A request that could not be sent: a refused TLS certificate is said as such, with what to
    /// do; no connection at all means no node answers.
    fn send_error(&self, e: awc::error::SendRequestError, doing: impl FnOnce() -> String) -> CliError {
        if let Some(presented) = self.http.get().and_then(|(_, seen)| seen.refused()) {
            let base = &self.base;
            return CliError::Tls(match self.pin {
                Some(pin) => format!(
                    "the TLS certificate of {base} has fingerprint {presented}, not the pinned {pin} — if the \
                     node's certificate was replaced on purpose, pass its new fingerprint (printed by its \
                     `buildnet up`, kept in its data dir's tls-fingerprint) with --tls-fingerprint"
                ),
                None => format!(
                    "{base} presents a TLS certificate that no known authority vouches for (fingerprint \
                     {presented}) — pass the fingerprint its `buildnet up` printed with --tls-fingerprint"
                ),
            });
        }
        match e {
            awc::error::SendRequestError::Connect(_) => CliError::NoNode { url: self.base.clone() },
            awc::error::SendRequestError::Timeout => {
                CliError::NoAnswer { url: self.base.clone(), secs: self.timeout.as_secs() }
            }
            // Something answered that does not speak HTTP.
            awc::error::SendRequestError::Response(e) => CliError::NotANode(format!(
                "{}: {e} — is {} a BuildNet node? (--address, BUILDNET_ADDRESS)",
                doing(),
                self.base
            )),
            other => CliError::Other(format!("{}: {other}", doing())),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.send("GET", path, None).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: Option<Value>) -> Result<T, CliError> {
        self.send("POST", path, body).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.send("DELETE", path, None).await
    }

    /// Uploads a file as a blob, streamed from disk with its size declared up front (the node
    /// refuses an oversized or forbidden upload before reading the body).
    pub async fn put_file(&self, path: &str, file: &Path) -> Result<(), CliError> {
        let url = format!("{}{path}", self.base);
        let local = |e: std::io::Error| CliError::Other(format!("{}: {e}", file.display()));
        let source = std::fs::File::open(file).map_err(local)?;
        let size = source.metadata().map_err(local)?.len();
        let chunks = futures_util::stream::try_unfold(source, |mut source| async move {
            let mut data = vec![0u8; CHUNK];
            let n = source.read(&mut data)?;
            data.truncate(n);
            Ok::<_, std::io::Error>((n > 0).then(|| (actix_web::web::Bytes::from(data), source)))
        });
        let mut req = self.http().put(&url).insert_header(("Content-Type", "application/octet-stream"));
        if let Some(token) = &self.token {
            req = req.insert_header(("Authorization", format!("Bearer {token}")));
        }
        let mut res = req
            .send_body(SizedStream::new(size, Box::pin(chunks)))
            .await
            .map_err(|e| self.send_error(e, || format!("uploading {} to {url}", file.display())))?;
        if !res.status().is_success() {
            let body = res.body().limit(64 << 10).await.unwrap_or_default();
            return Err(api_error(&self.base, res.status(), &body));
        }
        Ok(())
    }

    /// Downloads blob `digest` into a new file `to`, streamed, its BLAKE3 checked on the fly.
    /// `to` must not exist (nothing is followed or overwritten: the caller renames it into place);
    /// on any failure, a wrong digest included, it is deleted. Returns the size.
    pub async fn download_blob(&self, digest: &str, to: &Path) -> Result<u64, CliError> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(to)
            .map_err(|e| CliError::Other(format!("{}: {e}", to.display())))?;
        // Gone unless the whole blob arrived: also when this future is dropped half-way (the
        // CLI interrupted by Ctrl-C), which a check of the result alone missed.
        let mut partial = Partial { path: to, keep: false };
        let got = self.stream_blob(digest, &mut file).await;
        drop(file);
        partial.keep = got.is_ok();
        got
    }

    async fn stream_blob(&self, digest: &str, file: &mut std::fs::File) -> Result<u64, CliError> {
        let url = format!("{}/api/blobs/{digest}", self.base);
        let mut req = self.http().get(&url);
        if let Some(token) = &self.token {
            req = req.insert_header(("Authorization", format!("Bearer {token}")));
        }
        let mut res = req.send().await.map_err(|e| self.send_error(e, || format!("downloading {url}")))?;
        if !res.status().is_success() {
            let body = res.body().limit(64 << 10).await.unwrap_or_default();
            return Err(api_error(&self.base, res.status(), &body));
        }
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        while let Some(chunk) = res.next().await {
            let chunk = chunk.map_err(|e| CliError::Other(format!("downloading {url}: {e}")))?;
            hasher.update(&chunk);
            file.write_all(&chunk).map_err(|e| CliError::Other(format!("writing blob {digest}: {e}")))?;
            size += chunk.len() as u64;
        }
        let actual = hasher.finalize().to_hex().to_string();
        if actual != digest {
            return Err(CliError::Other(format!("{url}: the bytes received hash to {actual}, not {digest}")));
        }
        Ok(size)
    }

    /// Any method with an optional JSON body.
    pub async fn send_json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, CliError> {
        self.send(method, path, body).await
    }

    async fn send<T: DeserializeOwned>(&self, method: &str, path: &str, body: Option<Value>) -> Result<T, CliError> {
        let url = format!("{}{path}", self.base);
        let method = awc::http::Method::from_bytes(method.as_bytes()).map_err(|e| CliError::Other(e.to_string()))?;
        let wait = if answered_when_done(path) { WORK_TIMEOUT } else { self.timeout };
        let mut req = self.http().request(method, &url).timeout(wait);
        if let Some(token) = &self.token {
            req = req.insert_header(("Authorization", format!("Bearer {token}")));
        }
        let sent = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        };
        let mut res = sent.map_err(|e| self.send_error(e, || format!("request to {url} failed")))?;
        let status = res.status();
        let bytes = res
            .body()
            .limit(256 << 20)
            .await
            .map_err(|e| CliError::Other(format!("reading the answer from {url}: {e}")))?;
        if !status.is_success() {
            return Err(api_error(&self.base, status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            CliError::NotANode(format!(
                "unexpected answer from {url} ({e}) — is {} a BuildNet node of this version? (--address, BUILDNET_ADDRESS)",
                self.base
            ))
        })
    }
}

/// Bytes of a file read at a time for an upload.
const CHUNK: usize = 256 << 10;

/// An API error answer as a [`CliError`].
fn api_error(base: &str, status: awc::http::StatusCode, body: &[u8]) -> CliError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let code = err.and_then(|e| e.get("code")).and_then(Value::as_str).unwrap_or("http_error").to_string();
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{base} answered {status}"));
    // The node's words are for scripts sending headers; a CLI user passes a flag.
    let message = if status == awc::http::StatusCode::UNAUTHORIZED {
        format!(
            "missing or invalid API key for {base}: pass a key it knows with --token (or BUILDNET_TOKEN); \
             `buildnet key create` on that node makes one"
        )
    } else {
        message
    };
    CliError::Api { status: status.as_u16(), code, message }
}

/// A file being written, removed when this is dropped unless `keep` was set.
struct Partial<'a> {
    path: &'a Path,
    keep: bool,
}

impl Drop for Partial<'_> {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_dropped_half_way_leaves_no_file_and_a_whole_one_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (half, whole) = (dir.path().join(".half.buildnet-0"), dir.path().join(".whole.buildnet-1"));
        for path in [&half, &whole] {
            std::fs::write(path, "some bytes").expect("write");
        }
        drop(Partial { path: &half, keep: false });
        drop(Partial { path: &whole, keep: true });
        assert!(!half.exists(), "dropped before the whole blob arrived: removed");
        assert!(whole.exists(), "kept once it arrived");
    }
}
