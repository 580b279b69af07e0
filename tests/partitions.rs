//! Partitions (issue 12 item 2) on the cluster double: the default stack (docker, Patroni on
//! etcd3, ttl 10 s, loop_wait 2 s, retry_timeout 4 s, synchronous mode) deployed by the real
//! binary; a partition drops every packet in and out of one allocation's network namespace
//! but loopback (tests/support/cluster/faults.rs), so the member loses etcd, the other
//! members and PgBouncer at once. A writer inserts through PgBouncer every 100 ms and records
//! which member acknowledged each row (`inet_server_addr()`); a sampler asks every member's
//! Patroni (from inside its namespace, so a partition does not blind it) every 200 ms whether
//! Postgres is out of recovery, and reads the leader key from etcd.

use std::time::{Duration, Instant};

use crate::support::cluster::e2e::{lost_rows, wait_until, Deployed, StackDriver, Writer};
use crate::support::cluster::faults::{partition_primary, Netns, Observations, Partition, Sampler};

/// The default stack's Patroni ttl (cli/stack/decode.rs, etcd3).
const TTL: Duration = Duration::from_secs(10);
/// The sampler's period: what it sees is late by at most this.
const EVERY: Duration = Duration::from_millis(200);

fn members() -> Vec<String> {
    (0..3).map(|i| format!("member-{i}")).collect()
}

fn healthy(deployed: &Deployed, what: &str) {
    wait_until(what, Duration::from_secs(240), || deployed.healthy_topology().is_ok());
}

fn assert_safe(deployed: &Deployed, observations: &Observations, attempts: &[crate::support::cluster::e2e::Attempt]) {
    let lost = lost_rows(deployed, attempts);
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
    let two = observations.two_writable();
    assert!(two.is_empty(), "the sampler saw two writable members: {two:#?}");
    let outside = observations.acks_without_lock(attempts, Duration::from_secs(1));
    assert!(outside.is_empty(), "acknowledgements from a member without the leader lock: {outside:#?}");
    assert!(observations.roles.len() > 100, "the sampler took {} samples", observations.roles.len());
}

#[test]
fn a_partitioned_primary_demotes_within_ttl_a_new_one_takes_writes_and_the_old_one_rejoins() {
    let deployed = Deployed::new(StackDriver::Docker, 1.0);
    deployed.run_until_healthy();
    let sampler = Sampler::start(&deployed.cluster.id, &deployed.cluster.etcd.endpoint, "main", &members(), EVERY);
    let writer = Writer::start(&deployed);
    std::thread::sleep(Duration::from_secs(3));

    let outcome = partition_primary(&deployed, &writer, &sampler);
    eprintln!(
        "primary partition: {} demoted after {:.2} s, {} writable after {:.2} s, write gap {:.2} s, {} client errors, pg_rewind in its log: {}, streaming again after {:.1} s, whole cluster healthy: {:?}",
        outcome.old,
        outcome.demoted_after.as_secs_f64(),
        outcome.new,
        outcome.promoted_after.as_secs_f64(),
        outcome.gap.as_secs_f64(),
        outcome.errors,
        outcome.rewound,
        outcome.rejoined_after.as_secs_f64(),
        outcome.whole
    );
    assert!(outcome.demoted_after <= TTL + EVERY, "the partitioned primary was writable {:?} (ttl {TTL:?})", outcome.demoted_after);
    assert!(outcome.promoted_after > outcome.demoted_after, "a new primary before the old one demoted");

    std::thread::sleep(Duration::from_secs(2));
    let attempts = writer.stop();
    let observations = sampler.stop();
    let by_member = observations.acks_by_member(&attempts);
    eprintln!("acknowledged by member: {by_member:?}");
    assert!(by_member.get(&outcome.old).is_some_and(|n| *n > 0) && by_member.get(&outcome.new).is_some_and(|n| *n > 0));
    assert_safe(&deployed, &observations, &attempts);
}

#[test]
fn a_partitioned_replica_costs_a_stall_and_a_partitioned_pgbouncer_refuses_clients_until_healed() {
    let deployed = Deployed::new(StackDriver::Docker, 1.0);
    deployed.run_until_healthy();
    let sampler = Sampler::start(&deployed.cluster.id, &deployed.cluster.etcd.endpoint, "main", &members(), EVERY);
    let writer = Writer::start(&deployed);
    std::thread::sleep(Duration::from_secs(3));

    // The synchronous standby, the replica whose loss the primary's commits wait on.
    let cluster = deployed.patroni_cluster().unwrap();
    let sync =
        cluster["members"].as_array().unwrap().iter().find(|m| m["role"] == "sync_standby").unwrap()["name"].as_str().unwrap().to_string();
    let (leader, _) = deployed.healthy_topology().unwrap();
    let netns = Netns::find(&deployed.cluster.id, &sync, "patroni").unwrap();
    let before = writer.snapshot().len();
    let at = Instant::now();
    let partition = Partition::isolate(&netns);
    // Writes go on once Patroni has made the other replica synchronous.
    std::thread::sleep(Duration::from_secs(2));
    deployed.wait_write_after(&writer, at + Duration::from_secs(2), Duration::from_secs(90));
    std::thread::sleep(Duration::from_secs(5));
    let during: Vec<_> = writer.snapshot()[before..].to_vec();
    let gap = writer.gap_around(at, at + Duration::from_secs(2)).unwrap();
    let errors = during.iter().filter(|a| !a.ok).count();
    assert_eq!(deployed.leader().as_deref(), Some(leader.as_str()), "a replica's partition moved the leader");
    partition.heal();
    healthy(&deployed, "the partitioned replica streaming again");
    eprintln!("replica partition ({sync}, the synchronous standby): write gap {:.2} s, {errors} client errors", gap.as_secs_f64());
    assert_eq!(errors, 0, "clients saw errors while a replica was cut off: {during:#?}");
    assert!(gap < 3 * TTL, "writes stalled {gap:?} with a replica cut off");

    // The writer's PgBouncer cut off. Its logins time out (PGCONNECT_TIMEOUT 10 s); once
    // Consul has the instance critical, a client that resolves `main-pgbouncer` through
    // Consul (the writer does after a failure) moves to the other PgBouncer and writes go on.
    let locator = deployed.cluster.locator();
    let target = writer.snapshot().last().unwrap().via.clone();
    let alloc = deployed.cluster.allocation_at("main-pgbouncer", "pgbouncer", "pgbouncer", &target).expect("the writer's PgBouncer");
    let bouncer = Netns::of_allocation(&deployed.cluster.id, "pgbouncer", "pgbouncer", &alloc).expect("PgBouncer's namespace");
    let before = writer.snapshot().len();
    let at = Instant::now();
    let partition = Partition::isolate(&bouncer);
    let mut critical_after = None;
    wait_until("writes through the other PgBouncer", Duration::from_secs(90), || {
        if critical_after.is_none() && locator.statuses("main-pgbouncer").get(&target).is_some_and(|s| s == "critical") {
            critical_after = Some(at.elapsed());
        }
        writer.snapshot()[before..].iter().any(|a| a.ok && a.via != target)
    });
    std::thread::sleep(Duration::from_secs(3));
    let healed = Instant::now();
    partition.heal();
    let during: Vec<_> = writer.snapshot()[before..].iter().filter(|a| a.started + a.took < healed).cloned().collect();
    let errors: Vec<&str> = during.iter().filter(|a| !a.ok).map(|a| a.error.as_str()).collect();
    let first_other = during.iter().find(|a| a.ok && a.via != target).map(|a| a.started + a.took - at).unwrap();
    eprintln!(
        "PgBouncer partition ({target}): Consul critical after {critical_after:?}, first write through the other PgBouncer {:.2} s after the cut, {} inserts until healed, errors: {errors:?}",
        first_other.as_secs_f64(),
        during.len(),
    );
    assert!(
        during.iter().filter(|a| a.via == target).all(|a| !a.ok || a.started + a.took < at + Duration::from_secs(1)),
        "an insert through a cut-off PgBouncer was acknowledged"
    );
    assert!(!errors.is_empty() && errors.iter().all(|e| e.contains("timeout")), "clients of a cut-off PgBouncer: {errors:?}");
    wait_until("the healed PgBouncer passing again", Duration::from_secs(60), || {
        locator.statuses("main-pgbouncer").get(&target).is_some_and(|s| s == "passing")
    });

    std::thread::sleep(Duration::from_secs(1));
    let attempts = writer.stop();
    let observations = sampler.stop();
    assert_safe(&deployed, &observations, &attempts);
}
