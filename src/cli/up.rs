//! `buildnet up`: bind, start the node's actors, serve until SIGINT/SIGTERM, stop cleanly.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

use clap::Args;

use buildnet_actors::config::{NodeConfig, TlsSetting};
use buildnet_actors::mesh::roster::RosterError;
use buildnet_actors::node::{self, NodeOptions, ADDRESS_FILE, ADMIN_KEY_FILE, CONFIG_FILE};

use super::{data_dir, CliError, GlobalArgs};
use crate::web::tls;

#[derive(Args)]
pub struct UpArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port)
    /// [default: network.listen_port of the config, else port 80 on all interfaces]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Node config file [default: <data-dir>/node-config.json when it exists]
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Name shown for this node [default: node_name of the config, else the host name]
    #[arg(long)]
    pub name: Option<String>,
    /// Join the mesh of the node at this URL, with the join token given as --token
    #[arg(long, value_name = "URL")]
    pub join: Option<String>,
    /// Serve HTTPS: with the certificate of network.tls (or --tls-cert), else a self-signed one
    /// made at first start and kept in the data dir
    #[arg(long)]
    pub tls: bool,
    /// Serve HTTPS with this PEM certificate (chain); needs --tls-key
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Which certificate to serve, and the names of the setting that chose it (for errors):
/// --tls-cert/--tls-key, else network.tls, which --tls turns on (self-signed) when it is off.
fn tls_setting(args: &UpArgs, config: &NodeConfig) -> (TlsSetting, (&'static str, &'static str)) {
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            (TlsSetting::Files { cert: cert.clone(), key: key.clone() }, ("--tls-cert", "--tls-key"))
        }
        _ if args.tls && !config.network.tls.enabled() => (TlsSetting::SelfSigned, ("--tls", "--tls")),
        _ => (config.network.tls.clone(), ("network.tls.cert", "network.tls.key")),
    }
}

/// The names a new self-signed certificate is issued for: loopback, the address listened on,
/// the advertised address and the host name. (Clients pin its fingerprint; names matter only to
/// browsers, which warn about a self-signed certificate anyway.)
fn certificate_names(local: SocketAddr, config: &NodeConfig) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if !local.ip().is_unspecified() {
        names.push(local.ip().to_string());
    }
    names.extend(config.network.advertise_address.clone());
    names.extend(host_name());
    names.sort();
    names.dedup();
    names
}

fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    std::str::from_utf8(&buf[..end]).ok().map(str::to_string).filter(|h| !h.is_empty())
}

/// Binds where the user asked; with no address given, port 80 falls back to 127.0.0.1:8080.
fn bind(args: &UpArgs, config: &NodeConfig) -> Result<(TcpListener, Option<String>), CliError> {
    let explicit = args.listen.or_else(|| config.network.listen_port.map(|p| SocketAddr::from(([0, 0, 0, 0], p))));
    if let Some(addr) = explicit {
        return TcpListener::bind(addr)
            .map(|l| (l, None))
            .map_err(|e| CliError::Other(format!("cannot listen on {addr}: {e}")));
    }
    match TcpListener::bind(("0.0.0.0", 80)) {
        Ok(l) => Ok((l, None)),
        Err(e) => {
            let fallback: SocketAddr = ([127, 0, 0, 1], 8080).into();
            let l = TcpListener::bind(fallback).map_err(|e2| {
                CliError::Other(format!("cannot listen on port 80 ({e}) nor on {fallback} ({e2}); pass --listen"))
            })?;
            Ok((l, Some(format!("port 80 is not available ({e}); listening on {fallback} instead"))))
        }
    }
}

/// The URL a local client uses to reach a socket address.
fn url_for(addr: SocketAddr, tls: bool) -> String {
    let ip = if addr.ip().is_unspecified() { "127.0.0.1".parse().unwrap_or(addr.ip()) } else { addr.ip() };
    let scheme = if tls { "https" } else { "http" };
    match ip {
        std::net::IpAddr::V6(v6) => format!("{scheme}://[{v6}]:{}", addr.port()),
        v4 => format!("{scheme}://{v4}:{}", addr.port()),
    }
}

pub fn run(global: &GlobalArgs, args: UpArgs, join_token: Option<String>) -> Result<(), CliError> {
    if args.join.is_some() && join_token.is_none() {
        return Err(CliError::Usage("--join needs the join token: buildnet up --join URL --token bnj_…".into()));
    }
    if let Some(url) = &args.join {
        crate::web::mesh::check_join_url("--join", url).map_err(CliError::Usage)?;
    }
    let dir = data_dir(global)?;
    // Taken before anything in the data dir is read or written (its certificate included).
    let lock = node::lock_data_dir(&dir).map_err(|e| CliError::Other(e.to_string()))?;
    let config_path = args.config.clone().or_else(|| Some(dir.join(CONFIG_FILE)).filter(|p| p.exists()));
    let (config, config_file) = match &config_path {
        Some(p) => (NodeConfig::load(p).map_err(|e| CliError::Other(e.to_string()))?, p.display().to_string()),
        None => (NodeConfig::default(), "(defaults)".to_string()),
    };
    let (listener, note) = bind(&args, &config)?;
    let local = listener.local_addr().map_err(|e| CliError::Other(format!("listener: {e}")))?;
    if let Some(note) = note {
        eprintln!("buildnet: {note}");
    }
    let (setting, fields) = tls_setting(&args, &config);
    let tls = tls::server_tls(&dir, &setting, fields, certificate_names(local, &config))
        .map_err(|e| CliError::Other(e.to_string()))?;
    let url = url_for(local, tls.is_some());
    if tls.is_none() && !local.ip().is_loopback() {
        eprintln!(
            "buildnet: warning: serving plain HTTP on {local}: API keys and session cookies cross the network in clear; \
             start with --tls to serve HTTPS"
        );
    }
    let fingerprint = tls.as_ref().map(|t| t.fingerprint);
    tls::write_fingerprint(&dir, fingerprint).map_err(|e| CliError::Other(e.to_string()))?;

    actix_rt::System::new().block_on(async move {
        let joining = args.join.clone().zip(join_token);
        let started = buildnet_actors::start::start(NodeOptions {
            data_dir: dir.clone(),
            config,
            config_file,
            name: args.name,
            address: url.clone(),
            create_mesh: joining.is_none(),
            launcher: std::env::current_exe().ok(),
            lock: lock.clone(),
        })
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;
        let node = started.node.clone();
        if let Some((target, token)) = &joining {
            let pinned =
                buildnet_actors::mesh::roster::JoinToken::parse(token).map_err(|e| CliError::Usage(e.to_string()))?;
            // The same rule as `node join`: a mesh of one (a new node, or one that left) may
            // join; a member of the token's mesh restarted with the same flags just runs.
            match node.mesh.can_join(&pinned.mesh_id).await {
                Err(RosterError::AlreadyMember(id)) => log::info!("already a member of mesh {id}; not joining again"),
                Err(e) => {
                    node.shutdown("join refused").await;
                    return Err(CliError::Other(e.to_string()));
                }
                Ok(()) => match crate::web::mesh::join_remote(&node.mesh, target, token).await {
                    Ok(info) => println!("Joined mesh {} through {target}.", info.mesh_id),
                    Err(e) => {
                        node.shutdown("join refused").await;
                        return Err(CliError::Other(e));
                    }
                },
            }
        }
        let (tls_config, tls_cert) = match tls {
            Some(t) => (Some(t.config), Some((t.cert_path, t.generated))),
            None => (None, None),
        };
        let server = crate::web::server(node.clone(), listener, tls_config)
            .map_err(|e| CliError::Other(format!("cannot serve: {e}")))?;
        println!("BuildNet node {} is up.", node.identity.node_id);
        println!("  API:         {url}/api  (OpenAPI: {url}/api/openapi.json)");
        println!("  Admin pages: {url}/");
        println!("  Data dir:    {}", dir.display());
        if let (Some(fp), Some((cert, generated))) = (fingerprint, &tls_cert) {
            let made = if *generated { " (self-signed, made now)" } else { "" };
            println!("  TLS:         {}{made}", cert.display());
            println!("  Fingerprint: SHA-256 {fp}");
            println!(
                "               in {}; clients elsewhere pin it with --tls-fingerprint",
                dir.join(tls::FINGERPRINT_FILE).display()
            );
        }
        match &started.new_admin_key {
            Some(key) => println!(
                "  Admin key:   {key}\n               shown once; saved to {} (mode 0600) for the local CLI",
                dir.join(ADMIN_KEY_FILE).display()
            ),
            None => println!("  Admin key:   in {}", dir.join(ADMIN_KEY_FILE).display()),
        }
        println!("Stop with Ctrl-C.");
        // Last: whoever waits for the address file (a script, the local CLI) finds the banner
        // printed by then.
        std::fs::write(dir.join(ADDRESS_FILE), format!("{url}\n"))
            .map_err(|e| CliError::Other(format!("{}: {e}", dir.join(ADDRESS_FILE).display())))?;

        let served = server.await;
        log::info!("server stopped; closing the node");
        let _ = std::fs::remove_file(dir.join(ADDRESS_FILE));
        node.shutdown("signal").await;
        drop(lock);
        log::info!("stopped cleanly");
        actix_rt::System::current().stop();
        served.map_err(|e| CliError::Other(format!("server: {e}")))
    })
}
