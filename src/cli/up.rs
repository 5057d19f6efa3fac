//! `buildnet up`: bind, start the node's actors, serve until SIGINT/SIGTERM, stop cleanly.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

use clap::Args;

use buildnet_actors::config::NodeConfig;
use buildnet_actors::node::{self, NodeOptions, ADDRESS_FILE, ADMIN_KEY_FILE, CONFIG_FILE};

use super::{data_dir, CliError, GlobalArgs};

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
fn url_for(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() { "127.0.0.1".parse().unwrap_or(addr.ip()) } else { addr.ip() };
    match ip {
        std::net::IpAddr::V6(v6) => format!("http://[{v6}]:{}", addr.port()),
        v4 => format!("http://{v4}:{}", addr.port()),
    }
}

pub fn run(global: &GlobalArgs, args: UpArgs, join_token: Option<String>) -> Result<(), CliError> {
    if args.join.is_some() && join_token.is_none() {
        return Err(CliError::Usage("--join needs the join token: buildnet up --join URL --token bnj_…".into()));
    }
    let dir = data_dir(global)?;
    node::prepare_data_dir(&dir).map_err(|e| CliError::Other(e.to_string()))?;
    let config_path = args.config.clone().or_else(|| Some(dir.join(CONFIG_FILE)).filter(|p| p.exists()));
    let (config, config_file) = match &config_path {
        Some(p) => (NodeConfig::load(p).map_err(|e| CliError::Other(e.to_string()))?, p.display().to_string()),
        None => (NodeConfig::default(), "(defaults)".to_string()),
    };
    let (listener, note) = bind(&args, &config)?;
    let local = listener.local_addr().map_err(|e| CliError::Other(format!("listener: {e}")))?;
    let url = url_for(local);
    if let Some(note) = note {
        eprintln!("buildnet: {note}");
    }

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
        })
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;
        let node = started.node.clone();
        if let Some((target, token)) = &joining {
            let member = node.mesh.view().await.and_then(|view| view.mesh_id);
            let pinned =
                buildnet_actors::mesh::roster::JoinToken::parse(token).map_err(|e| CliError::Usage(e.to_string()))?;
            match member {
                Some(id) if id == pinned.mesh_id => log::info!("already a member of mesh {id}; not joining again"),
                Some(id) => {
                    node.shutdown("join refused").await;
                    return Err(CliError::Other(format!(
                        "this node already belongs to mesh {id}; run `buildnet node leave` first"
                    )));
                }
                None => match crate::web::mesh::join_remote(&node.mesh, target, token).await {
                    Ok(info) => println!("Joined mesh {} through {target}.", info.mesh_id),
                    Err(e) => {
                        node.shutdown("join refused").await;
                        return Err(CliError::Other(e));
                    }
                },
            }
        }
        let server =
            crate::web::server(node.clone(), listener).map_err(|e| CliError::Other(format!("cannot serve: {e}")))?;
        std::fs::write(dir.join(ADDRESS_FILE), format!("{url}\n"))
            .map_err(|e| CliError::Other(format!("{}: {e}", dir.join(ADDRESS_FILE).display())))?;

        println!("BuildNet node {} is up.", node.identity.node_id);
        println!("  API:         {url}/api  (OpenAPI: {url}/api/openapi.json)");
        println!("  Admin pages: {url}/");
        println!("  Data dir:    {}", dir.display());
        match &started.new_admin_key {
            Some(key) => println!(
                "  Admin key:   {key}\n               shown once; saved to {} (mode 0600) for the local CLI",
                dir.join(ADMIN_KEY_FILE).display()
            ),
            None => println!("  Admin key:   in {}", dir.join(ADMIN_KEY_FILE).display()),
        }
        println!("Stop with Ctrl-C.");

        let served = server.await;
        log::info!("server stopped; closing the node");
        let _ = std::fs::remove_file(dir.join(ADDRESS_FILE));
        node.shutdown("signal").await;
        log::info!("stopped cleanly");
        actix_rt::System::current().stop();
        served.map_err(|e| CliError::Other(format!("server: {e}")))
    })
}
