//! The short soak (issue 12 item 3) in CI: one fault of each kind (postmaster kill, member
//! kill, partition, switchover, node loss) in a seeded random order on the default stack on
//! the cluster double, a writer through PgBouncer and the split-brain sampler running
//! throughout, each cycle waiting for full health before the next. The long one (≥ 20 cycles)
//! is `cargo bench --bench soak`. `PGNOMAD_SOAK_SEED` replays an order.

use crate::support::cluster::e2e::{Deployed, StackDriver};
use crate::support::cluster::faults::{schedule, seed, soak, Chaos};

#[test]
fn five_faults_in_random_order_lose_no_acknowledged_row_and_never_show_two_writable_primaries() {
    let seed = seed();
    let faults = schedule(seed, Chaos::ALL.len());
    eprintln!("soak seed {seed} (PGNOMAD_SOAK_SEED={seed} replays it): {:?}", faults);
    let deployed = Deployed::new(StackDriver::Docker, 0.5);
    deployed.run_until_healthy();
    let outcome = soak(&deployed, &faults);
    eprintln!("{}", outcome.report());
    assert_eq!(outcome.cycles.len(), faults.len());
    assert!(outcome.lost.is_empty(), "seed {seed}: acknowledged rows lost: {:?}", outcome.lost);
    assert!(outcome.two_writable.is_empty(), "seed {seed}: two writable members: {:#?}", outcome.two_writable);
    assert!(outcome.acks_without_lock.is_empty(), "seed {seed}: {:#?}", outcome.acks_without_lock);
    for cycle in &outcome.cycles {
        assert_eq!(cycle.present, cycle.acknowledged, "seed {seed}: {}", cycle.line());
        assert!(cycle.acknowledged > 0 && cycle.new_leader != cycle.old_leader, "seed {seed}: {}", cycle.line());
    }
}
