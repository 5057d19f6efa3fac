//! The network benchmark (plan §8.1) over the real mesh link: the same Noise-encrypted WebSocket
//! that carries builds, so the figures are what a build would see, not what a bare TCP socket
//! could do.
//!
//! Latency: `samples` echoes, one at a time, timed from the send to the reply. Upload: `bytes` of
//! payload, timed until the peer confirms it has counted every byte. Download: the peer sends
//! `bytes` on request, timed from the request to the last byte. The payload is counted and
//! dropped on arrival; nothing is written anywhere.

use std::time::{Duration, Instant};

use std::collections::HashMap;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::mpsc::UnboundedSender;
use utoipa::ToSchema;

use super::bridge::{self, BridgeActor};
use super::MeshActor;
use crate::bench::NetworkBenchmarkResult;
use crate::wire::{MeshMessage, NodeId};

/// Payload bytes per message; with framing it stays well inside one Noise frame.
pub const PAYLOAD_CHUNK: usize = 48 * 1024;
/// The most a peer sends for one download request.
pub const MAX_PULL_BYTES: u64 = 1 << 30;
/// How long one step may wait for the peer before the test is abandoned.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkOptions {
    /// Round trips to time.
    pub samples: u32,
    /// Pause between round trips (ms), so jitter is sampled over time rather than back to back.
    pub interval_ms: u64,
    /// Payload each way, in MB.
    pub size_mb: u64,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        NetworkOptions { samples: 50, interval_ms: 10, size_mb: 32 }
    }
}

impl NetworkOptions {
    /// Names the field that is out of range.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=10_000).contains(&self.samples) {
            return Err("samples: must be between 1 and 10000".into());
        }
        if self.interval_ms > 10_000 {
            return Err("interval_ms: must be at most 10000".into());
        }
        if !(1..=1024).contains(&self.size_mb) {
            return Err("size_mb: must be between 1 and 1024".into());
        }
        Ok(())
    }
}

/// What the mesh actor forwards to a running probe.
#[derive(Debug)]
pub enum ProbeEvent {
    Echo(u32),
    Data(usize),
    End,
    Received(u64),
}

/// Latency, jitter and spread of round trips (ms).
pub fn latency_figures(rtts: &[f64]) -> (f64, f64, f64, f64) {
    if rtts.is_empty() {
        return (0.0, 0.0, 0.0, 0.0);
    }
    let mut sorted = rtts.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
    let jitter = if n > 1 { rtts.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
    (median, sorted[0], sorted[n - 1], jitter)
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 * 8.0 / secs / 1e6
    } else {
        0.0
    }
}

async fn next(rx: &mut UnboundedReceiver<ProbeEvent>, what: &str) -> Result<ProbeEvent, String> {
    match tokio::time::timeout(STEP_TIMEOUT, rx.recv()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => Err(format!("the link closed during the {what} test")),
        Err(_) => Err(format!("the peer did not answer the {what} test within {}s", STEP_TIMEOUT.as_secs())),
    }
}

/// Runs the three measurements over `link`; the mesh actor feeds `rx` with the peer's answers.
pub async fn measure(
    link: Addr<BridgeActor>,
    mut rx: UnboundedReceiver<ProbeEvent>,
    probe: u64,
    target: (String, String),
    opts: NetworkOptions,
) -> Result<NetworkBenchmarkResult, String> {
    let started = Instant::now();
    let send = |body: MeshMessage| link.do_send(bridge::Send { body });
    let mut rtts = Vec::with_capacity(opts.samples as usize);
    for seq in 0..opts.samples {
        let t = Instant::now();
        send(MeshMessage::NetEcho { probe, seq });
        loop {
            match next(&mut rx, "latency").await? {
                ProbeEvent::Echo(s) if s == seq => break,
                _ => continue,
            }
        }
        rtts.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(opts.interval_ms)).await;
    }
    let bytes = opts.size_mb << 20;
    let payload = vec![0x5Au8; PAYLOAD_CHUNK];

    let t = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let n = PAYLOAD_CHUNK.min((bytes - sent) as usize);
        send(MeshMessage::NetData { probe, data: payload[..n].to_vec() });
        sent += n as u64;
    }
    send(MeshMessage::NetDataEnd { probe });
    let confirmed = loop {
        if let ProbeEvent::Received(b) = next(&mut rx, "upload").await? {
            break b;
        }
    };
    let upload = mbps(confirmed, t.elapsed().as_secs_f64());
    if confirmed != bytes {
        return Err(format!("the peer counted {confirmed} of {bytes} bytes sent"));
    }

    let t = Instant::now();
    send(MeshMessage::NetPull { probe, bytes });
    let mut received = 0u64;
    loop {
        match next(&mut rx, "download").await? {
            ProbeEvent::Data(n) => received += n as u64,
            ProbeEvent::End => break,
            _ => {}
        }
    }
    let download = mbps(received, t.elapsed().as_secs_f64());
    if received != bytes {
        return Err(format!("received {received} of the {bytes} bytes asked for"));
    }

    let (latency, min, max, jitter) = latency_figures(&rtts);
    Ok(NetworkBenchmarkResult {
        target_node: target.0,
        target_name: target.1,
        latency_ms: latency,
        min_latency_ms: min,
        max_latency_ms: max,
        jitter_ms: jitter,
        samples: opts.samples,
        upload_mbps: upload,
        download_mbps: download,
        bytes,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

impl MeshActor {
    pub(super) fn forward_to_probe(&mut self, probe: u64, event: ProbeEvent) {
        if let Some(tx) = self.probes.active.get(&probe) {
            if tx.send(event).is_err() {
                self.probes.active.remove(&probe);
            }
        }
    }
}

/// Measures the link to a peer (see [`netbench`]).
#[derive(Message)]
#[rtype(result = "Result<crate::bench::NetworkBenchmarkResult, String>")]
pub struct NetworkTest {
    pub peer: NodeId,
    pub options: NetworkOptions,
}

impl Handler<NetworkTest> for MeshActor {
    type Result = ResponseActFuture<Self, Result<crate::bench::NetworkBenchmarkResult, String>>;

    fn handle(&mut self, msg: NetworkTest, ctx: &mut Context<Self>) -> Self::Result {
        let link = match self.link_for_work(&msg.peer, ctx) {
            Ok(link) => self.links.get(&link).map(|l| l.addr.clone()),
            Err(Some(opened)) => {
                // Live, but the topology links us elsewhere: measure once a link is up.
                let (me, peer) = (ctx.address(), msg.peer.clone());
                return Box::pin(
                    async move {
                        opened.await.map_err(|_| format!("no link to node {peer} could be opened"))?;
                        me.send(msg).await.unwrap_or_else(|_| Err("the mesh actor stopped".into()))
                    }
                    .into_actor(self),
                );
            }
            Err(None) => None,
        };
        let name =
            self.peers.get(&msg.peer).map(|p| p.advert.as_ref().map_or(p.entry.name.clone(), |a| a.name.clone()));
        let (Some(link), Some(name)) = (link, name) else {
            let why = format!("node {} is not online", msg.peer);
            return Box::pin(async move { Err(why) }.into_actor(self));
        };
        let probe = rand::random::<u64>();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.probes.active.insert(probe, tx);
        let fut = measure(link, rx, probe, (msg.peer.to_string(), name), msg.options);
        Box::pin(fut.into_actor(self).map(move |result, act, _| {
            act.probes.active.remove(&probe);
            result
        }))
    }
}

/// Network probes in flight: this node's own, and peers' upload payload being counted.
#[derive(Default)]
pub(super) struct Probes {
    /// This node's own probes: id → where the peer's answers go.
    active: HashMap<u64, UnboundedSender<ProbeEvent>>,
    /// Payload bytes counted for peers' upload probes.
    counted: HashMap<(NodeId, u64), u64>,
}

impl MeshActor {
    /// Every netbench message: answers for peers' probes, events for this node's own.
    pub(super) fn on_probe(&mut self, link_id: u64, from: NodeId, message: MeshMessage) {
        match message {
            MeshMessage::NetEcho { probe, seq } => self.send(link_id, MeshMessage::NetEchoReply { probe, seq }),
            MeshMessage::NetEchoReply { probe, seq } => self.forward_to_probe(probe, ProbeEvent::Echo(seq)),
            MeshMessage::NetData { probe, data } if self.probes.active.contains_key(&probe) => {
                self.forward_to_probe(probe, ProbeEvent::Data(data.len()))
            }
            MeshMessage::NetData { probe, data } => {
                *self.probes.counted.entry((from, probe)).or_default() += data.len() as u64
            }
            MeshMessage::NetDataEnd { probe } if self.probes.active.contains_key(&probe) => {
                self.forward_to_probe(probe, ProbeEvent::End)
            }
            MeshMessage::NetDataEnd { probe } => {
                let bytes = self.probes.counted.remove(&(from, probe)).unwrap_or(0);
                self.send(link_id, MeshMessage::NetReceived { probe, bytes });
            }
            MeshMessage::NetReceived { probe, bytes } => self.forward_to_probe(probe, ProbeEvent::Received(bytes)),
            MeshMessage::NetPull { probe, bytes } => {
                let payload = vec![0xA5u8; PAYLOAD_CHUNK];
                let (mut sent, bytes) = (0u64, bytes.min(MAX_PULL_BYTES));
                while sent < bytes {
                    let n = PAYLOAD_CHUNK.min((bytes - sent) as usize);
                    self.send(link_id, MeshMessage::NetData { probe, data: payload[..n].to_vec() });
                    sent += n as u64;
                }
                self.send(link_id, MeshMessage::NetDataEnd { probe });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_the_median_and_jitter_the_mean_step() {
        let (median, min, max, jitter) = latency_figures(&[1.0, 3.0, 2.0, 2.0]);
        assert_eq!((median, min, max), (2.0, 1.0, 3.0));
        assert!((jitter - (2.0 + 1.0 + 0.0) / 3.0).abs() < 1e-9);
        assert_eq!(latency_figures(&[]), (0.0, 0.0, 0.0, 0.0));
    }

    #[test]
    fn options_name_the_bad_field() {
        assert!(NetworkOptions::default().check().is_ok());
        let bad = NetworkOptions { size_mb: 0, ..NetworkOptions::default() };
        assert!(bad.check().unwrap_err().starts_with("size_mb"));
        let bad = NetworkOptions { samples: 0, ..NetworkOptions::default() };
        assert!(bad.check().unwrap_err().starts_with("samples"));
    }

    #[test]
    fn megabits_per_second() {
        assert_eq!(mbps(1_000_000, 1.0), 8.0);
        assert_eq!(mbps(5, 0.0), 0.0);
    }
}
