//! The mesh envelope decoder: how a decrypted frame becomes an `Envelope<MeshMessage>`
//! (`wire::decode`, rmp-serde). Oracle: whatever it accepts re-encodes, and the re-encoding
//! decodes and encodes to the same bytes.

use buildnet_actors::wire::{self, Envelope, MeshMessage, NodeId, PROTOCOL_VERSION};
use serde_json::json;

use crate::mutate::Hints;
use crate::run::Target;

pub struct EnvelopeTarget;

/// The node id the samples come from.
pub const FROM: &str = "3f9a0c1d5e7b2a48";
const TO: &str = "0123456789abcdef";

fn cpu() -> serde_json::Value {
    json!({"count": 8, "physical_count": 4, "offered": 6, "architecture": "x86_64", "model": "Ryzen",
           "frequency_mhz": 3600, "features": ["avx2", "sse4.2"]})
}

fn tool(name: &str) -> serde_json::Value {
    json!({"name": name, "path": format!("/usr/bin/{name}"), "version": "12.2.0",
           "version_output": format!("{name} 12.2.0"), "capabilities": ["c", "c++"], "error": null})
}

fn node_status() -> serde_json::Value {
    let memory = json!({"total_bytes": 16u64 << 30, "available_bytes": 8u64 << 30, "offered_bytes": 4u64 << 30});
    let volume = json!({"path": "/var/lib/buildnet", "mount_point": "/", "total_bytes": 1u64 << 40,
        "available_bytes": 1u64 << 39, "offered_bytes": 1u64 << 38, "storage_type": "ssd", "purpose": "data"});
    let lease = json!({"id": "l1", "resource": "cpu", "amount": 2, "holder": "b_1", "expires_at_ms": 99, "epoch": 3});
    json!({
        "node_id": FROM, "name": "laptop", "address": "http://10.0.0.2:8080", "version": "0.1.0",
        "role": "worker", "status": "online", "tags": ["fast", "arm"], "started_at_ms": 1, "uptime_ms": 2,
        "accept_remote_builds": true, "priority_weight": 1.5,
        "resources": {"cpu": cpu(), "memory": memory, "storage": [volume.clone()], "tools": [tool("gcc")],
            "runtimes": [tool("node")],
            "network": [{"name": "eth0", "addresses": ["10.0.0.2", "fe80::1"], "mac_address": "aa:bb:cc:dd:ee:ff"}],
            "scanned_at_ms": 3, "scan_duration_ms": 4},
        "resource_status": [
            {"key": "cpu", "kind": "cpu", "unit": "cores", "capacity": 6, "leased": 2, "available": 4,
             "leases": [lease], "restarts": 0, "type": "cpu", "info": cpu()},
            {"key": "storage:/var/lib/buildnet", "kind": "storage", "unit": "bytes", "capacity": 10, "leased": 0,
             "available": 10, "leases": [], "restarts": 1, "type": "storage", "info": volume},
            {"key": "tool:gcc", "kind": "tool", "unit": "slots", "capacity": 6, "leased": 0, "available": 6,
             "leases": [], "restarts": 0, "type": "tool", "info": tool("gcc")}
        ],
        "sandbox": "landlock"
    })
}

fn task_request() -> serde_json::Value {
    let file = |p: &str| json!({"path": p, "digest": "ab".repeat(32), "executable": false, "size": 120});
    json!({"task_id": 7, "cores": 2, "memory_bytes": 1u64 << 30, "epoch": 4, "volume": "/var/lib/buildnet",
        "task": {"build_id": "b_0123456789ab", "package": "app", "invocation": {"argv": ["gcc", "-c", "a.c"]},
            "env": {"CC": "gcc", "LANG": "C"}, "files": [file("src/a.c"), file("src/a.h")],
            "outputs": ["obj/a.o"], "tools": ["gcc"]}})
}

fn ledger_entry() -> serde_json::Value {
    json!({"origin": FROM, "seq": 3, "prev_hash": "0".repeat(64), "hlc": {"wall_ms": 1_700_000_000_000u64, "logical": 2},
        "entry_type": "BuildCompleted",
        "data": {"build_id": "b_1", "packages": [{"name": "app", "ms": 12.5}], "ok": true, "note": null},
        "hash": "cd".repeat(32), "signature": "ef".repeat(64)})
}

fn roster_entry() -> serde_json::Value {
    json!({"node_id": TO, "name": "vps", "role": "builder", "ed_public": "11".repeat(32),
        "noise_public": "22".repeat(32), "address": "https://vps.example:8443", "issued_at_ms": 5,
        "revoked": false, "signature": "33".repeat(64)})
}

/// One packed ledger head (`wire::message::packed_heads`: the origin's 16 digits, the sequence
/// number big-endian, the hash's 32 bytes), as the JSON array of bytes serde takes for it.
fn packed_head(origin: &str, seq: u64, hash_byte: u8) -> serde_json::Value {
    let mut bytes = origin.as_bytes().to_vec();
    bytes.extend_from_slice(&seq.to_be_bytes());
    bytes.extend_from_slice(&[hash_byte; 32]);
    json!(bytes)
}

/// One message of every kind, as JSON in the shape serde gives `MeshMessage`.
fn sample_bodies() -> Vec<serde_json::Value> {
    let view = json!({"coordinator": FROM, "epoch": 14});
    let result = json!({"exit_code": 0, "outputs": [{"path": "obj/a.o", "digest": "ab".repeat(32),
        "executable": false, "size": 900}], "output_tail": "ok\n", "duration_ms": 40, "cpu_ms": 35, "error": null});
    vec![
        json!({"Hello": {"node_id": FROM, "name": "laptop", "address": "http://10.0.0.2:8080", "version": "0.1.0"}}),
        json!({"Ping": {"sent_ms": 1_700_000_000_000u64, "view": view}}),
        json!({"Pong": {"echo_ms": 12}}),
        json!({"Advert": {"seq": 1_700_000_000_000u64, "status": node_status()}}),
        json!({"AdvertWant": {"nodes": [FROM, TO]}}),
        json!({"Roster": {"entries": [roster_entry(), roster_entry()]}}),
        json!({"LedgerHeads": {"heads": packed_head(FROM, 3, 0xcd)}}),
        json!({"LedgerEntries": {"entries": [ledger_entry()]}}),
        json!({"Leave": {"node_id": FROM}}),
        json!("Rekey"),
        json!({"TaskRequest": task_request()}),
        json!({"BlobWant": {"digests": ["ab".repeat(32), "cd".repeat(32)]}}),
        json!({"BlobChunk": {"digest": "ab".repeat(32), "offset": 0, "total": 8, "data": [1, 2, 3, 4, 5, 6, 7, 8]}}),
        json!({"BlobAck": {"digest": "ab".repeat(32), "offset": u64::MAX}}),
        json!({"TaskDone": {"task_id": 7, "result": {"Ok": result.clone()}}}),
        json!({"TaskDone": {"task_id": 10, "result": {"Ok": result},
            "outputs": [{"digest": "ab".repeat(32), "data": vec![7u8; 900]}]}}),
        json!({"TaskDone": {"task_id": 8, "result": {"Err": {"kind": "busy", "detail": "no free core"}}}}),
        json!({"TaskDone": {"task_id": 9, "result": {"Err": {"kind": "cancelled"}}}}),
        json!({"TaskCancel": {"build_id": "b_0123456789ab"}}),
        json!({"TaskOutput": {"task_id": 7, "chunk": "compiling add.c\n"}}),
        json!({"LedgerDigest": {"digest": "ab".repeat(32)}}),
        json!({"NetEcho": {"probe": 1, "seq": 2}}),
        json!({"NetEchoReply": {"probe": 1, "seq": 2}}),
        json!({"NetDataEnd": {"probe": 1}}),
        json!({"NetReceived": {"probe": 1, "bytes": 1 << 20}}),
        json!({"NetPull": {"probe": 1, "bytes": 1 << 20}}),
        json!({"BenchmarkGrant": {"epoch": 14}}),
    ]
}

/// Every sample message that the wire types accept (a sample that stops matching them is
/// skipped here and caught by this crate's tests).
pub fn sample_messages() -> Vec<MeshMessage> {
    let mut out: Vec<MeshMessage> =
        sample_bodies().into_iter().filter_map(|v| serde_json::from_value(v).ok()).collect();
    out.push(MeshMessage::NetData { probe: 3, data: vec![0xa5; 300] });
    out
}

/// How many samples there are (for the test that they all still build).
pub fn sample_count() -> usize {
    sample_bodies().len() + 1
}

/// `body` in an envelope from [`FROM`], encoded as a link sends it.
pub fn encode(id: u64, body: MeshMessage) -> Option<Vec<u8>> {
    let from = NodeId::parse(FROM).ok()?;
    let to = NodeId::parse(TO).ok();
    wire::encode(&Envelope { v: PROTOCOL_VERSION, id, from, to, body }).ok()
}

/// The name of a message's variant.
pub fn variant(body: &MeshMessage) -> String {
    let debug = format!("{body:?}");
    debug.split(|c: char| !c.is_alphanumeric()).next().unwrap_or_default().to_string()
}

/// Field names and markers worth inserting.
pub fn dictionary() -> Vec<Vec<u8>> {
    let mut d: Vec<Vec<u8>> = Vec::new();
    for name in [
        "v",
        "id",
        "from",
        "to",
        "body",
        "Hello",
        "Ping",
        "Advert",
        "AdvertWant",
        "seq",
        "Roster",
        "LedgerEntries",
        "TaskRequest",
        "BlobChunk",
        "TaskDone",
        "outputs",
        "Ok",
        "Err",
        "kind",
        "detail",
        "data",
        "entries",
        "type",
        "info",
        "resource_status",
        "Rekey",
    ] {
        let mut t = Vec::new();
        if rmp::encode::write_str(&mut t, name).is_ok() {
            d.push(t);
        }
    }
    for marker in [0xc0u8, 0xc2, 0xc3, 0xca, 0xcb, 0xcf, 0xd3, 0x80, 0x90, 0xa0, 0xc4, 0xd9, 0xff, 0xe0] {
        d.push(vec![marker]);
    }
    d.push(vec![0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0]); // f64 NaN
    d.push(vec![0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]); // u64::MAX
    d.push(vec![0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0]); // i64::MIN
    d
}

pub fn hints() -> Hints {
    Hints {
        dictionary: dictionary(),
        // fixarray of one, fixmap of one keyed "a", array16 of one, a map "data": […
        nesting: vec![
            vec![0x91],
            vec![0x81, 0xa1, b'a'],
            vec![0xdc, 0x00, 0x01],
            vec![0x81, 0xa4, b'd', b'a', b't', b'a'],
        ],
        binary: true,
    }
}

/// Decodes like the bridge does, and checks the round trip.
pub fn check(input: &[u8]) -> Result<String, String> {
    let env = match wire::decode(input) {
        Ok(env) => env,
        Err(e) => return Ok(super::label("refused", &e)),
    };
    let kind = variant(&env.body);
    let again = wire::encode(&env).map_err(|e| format!("accepted {kind} does not re-encode: {e}"))?;
    let env2 = wire::decode(&again).map_err(|e| format!("re-encoded {kind} does not decode: {e}"))?;
    let third = wire::encode(&env2).map_err(|e| format!("re-decoded {kind} does not encode: {e}"))?;
    if third != again {
        return Err(format!("{kind} does not round-trip: {} vs {} bytes", again.len(), third.len()));
    }
    Ok(format!("ok:{kind}"))
}

impl Target for EnvelopeTarget {
    fn name(&self) -> &'static str {
        "envelope"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        sample_messages().into_iter().enumerate().filter_map(|(i, m)| encode(i as u64 + 1, m)).collect()
    }

    fn hints(&self) -> Hints {
        hints()
    }

    fn run(&mut self, input: &[u8]) -> Result<String, String> {
        check(input)
    }
}
