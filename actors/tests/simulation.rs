//! The simulated mesh at a size CI can afford (10 engines, about half a minute): every scripted
//! fault must end — a silent worker is marked offline everywhere, the live nodes agree on a new
//! coordinator, both sides of a split see each other go, and after the heal every acknowledged
//! entry is on every live node. Timings are the benchmark's business (`benches/mesh_sim.rs`,
//! `bench/scale.py`); this checks that the steps happen at all.

use std::time::Duration;

use buildnet_actors::mesh::memory::LinkConditions;
use buildnet_actors::simulation::{run, Scenario};

#[actix_rt::test]
async fn ten_engines_survive_silence_failover_and_a_split_without_losing_an_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut scenario = Scenario::new(10);
    scenario.conditions = LinkConditions {
        latency: Duration::from_millis(2),
        jitter: Duration::from_millis(3),
        loss: 0.01,
        retransmit: Duration::from_millis(200),
    };
    scenario.entries_per_side = 15;
    let report = match run(dir.path(), &scenario).await {
        Ok(r) => r,
        Err(e) => panic!("the simulation did not finish: {e}"),
    };
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
    assert_eq!(report.nodes, 10);
    assert_eq!(report.acknowledged_entries, 30, "each side wrote its entries while split");
    assert_eq!(report.lost_entries, 0, "every acknowledged entry reached every live node");
    assert!(report.bytes_per_node_per_s > 0.0, "an idle mesh still gossips");
    // Ten members are past a full mesh: each links to its row and column of the grid (at most
    // 2 x 4 here), and reaches the rest through one of them.
    assert!(report.links_per_node < 6.0, "links per node: {}", report.links_per_node);
    // Work between two members without a link opens one (the network test itself succeeded).
    assert_eq!(report.on_demand_links, 1, "a link opened on demand for the network test");
}
