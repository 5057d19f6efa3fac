//! The CLI's HTTP client: one request helper that turns "nothing answers", API errors and
//! transport failures into [`CliError`]s with one clear line each.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::CliError;

/// A connection to one node's API.
pub struct Client {
    http: awc::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(base: String, token: Option<String>) -> Self {
        let http = awc::Client::builder().timeout(Duration::from_secs(300)).finish();
        Client { http, base: base.trim_end_matches('/').to_string(), token }
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

    /// Uploads raw bytes.
    pub async fn put_bytes(&self, path: &str, bytes: Vec<u8>) -> Result<(), CliError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.put(&url).insert_header(("Content-Type", "application/octet-stream"));
        if let Some(token) = &self.token {
            req = req.insert_header(("Authorization", format!("Bearer {token}")));
        }
        let res = req.send_body(bytes).await.map_err(|e| match e {
            awc::error::SendRequestError::Connect(_) => CliError::NoNode { url: self.base.clone() },
            other => CliError::Other(format!("uploading to {url}: {other}")),
        })?;
        if !res.status().is_success() {
            return Err(CliError::Other(format!("{url} refused the upload ({})", res.status())));
        }
        Ok(())
    }

    /// Downloads raw bytes.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, CliError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.get(&url);
        if let Some(token) = &self.token {
            req = req.insert_header(("Authorization", format!("Bearer {token}")));
        }
        let mut res = req.send().await.map_err(|e| match e {
            awc::error::SendRequestError::Connect(_) => CliError::NoNode { url: self.base.clone() },
            other => CliError::Other(format!("downloading {url}: {other}")),
        })?;
        if !res.status().is_success() {
            return Err(CliError::Other(format!("{url} answered {}", res.status())));
        }
        Ok(res.body().limit(1 << 30).await.map_err(|e| CliError::Other(format!("downloading {url}: {e}")))?.to_vec())
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
        let mut req = self.http.request(method, &url);
        if let Some(token) = &self.token {
            req = req.insert_header(("Authorization", format!("Bearer {token}")));
        }
        let sent = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        };
        let mut res = sent.map_err(|e| match e {
            awc::error::SendRequestError::Connect(_) => CliError::NoNode { url: self.base.clone() },
            awc::error::SendRequestError::Timeout => CliError::Other(format!("{url} did not answer in time")),
            other => CliError::Other(format!("request to {url} failed: {other}")),
        })?;
        let status = res.status();
        let bytes = res
            .body()
            .limit(256 << 20)
            .await
            .map_err(|e| CliError::Other(format!("reading the answer from {url}: {e}")))?;
        if !status.is_success() {
            let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
            let err = parsed.as_ref().and_then(|v| v.get("error"));
            let code = err.and_then(|e| e.get("code")).and_then(Value::as_str).unwrap_or("http_error").to_string();
            let message = err
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("{} answered {status}", self.base));
            return Err(CliError::Api { status: status.as_u16(), code, message });
        }
        serde_json::from_slice(&bytes).map_err(|e| CliError::Other(format!("unexpected answer from {url}: {e}")))
    }
}
