//! `pgnomad restore --in-place` on the cluster double (issue 11 item 4): the real binary
//! restores the default stack (Patroni on etcd3, a repository host, encrypted) to a time
//! between two sets of rows, from its own repository, on three nodes with real containers;
//! a run killed part-way (in the restore, in its finish, in a revert) is resumed by the next.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support::cluster::e2e::{assert_ok, text, wait_until, Deployed, StackDriver};

fn json_of(what: &str, out: &std::process::Output) -> Value {
    assert_ok(what, out);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", text(&out.stdout)))
}

/// What each member's data volume holds at its top, on whichever node has it.
fn volume_entries(deployed: &Deployed) -> Vec<(String, Vec<String>)> {
    (0..3)
        .map(|i| {
            let id = format!("main-member-{i}");
            let mut entries: Vec<String> = deployed
                .cluster
                .nodes()
                .iter()
                .map(|n| n.csi_volume_path(&id))
                .filter(|p| p.join("pgdata").exists())
                .flat_map(|p| {
                    std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect::<Vec<_>>()
                })
                .collect();
            entries.sort();
            (id, entries)
        })
        .collect()
}

/// The task names of each group of the postgres job as the double has it now.
/// Each scheduled backup job's `periodic.enabled` as registered now, and how many of its
/// versions had it off.
fn backup_schedules(deployed: &Deployed) -> Vec<(String, bool, usize)> {
    let schedules: Vec<_> = ["full", "diff", "incr"]
        .iter()
        .map(|kind| format!("main-backup-{kind}"))
        .filter_map(|id| {
            let versions = deployed.cluster.nomad.job_versions(&id);
            let on = versions.last()?["Periodic"]["Enabled"] == true;
            let off = versions.iter().filter(|v| v["Periodic"]["Enabled"] == false).count();
            Some((id, on, off))
        })
        .collect();
    assert!(!schedules.is_empty(), "the stack schedules no backup job");
    schedules
}

fn tasks_of_job(deployed: &Deployed) -> Vec<Vec<String>> {
    let versions = deployed.cluster.nomad.job_versions("main-postgres");
    let newest = versions.iter().max_by_key(|v| v["Version"].as_u64()).cloned().unwrap_or_default();
    newest["TaskGroups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| g["Tasks"].as_array().into_iter().flatten().map(|t| t["Name"].as_str().unwrap_or("").to_owned()).collect())
        .collect()
}

/// Runs pgnomad with `args` and kills it once a version of the postgres job registered since
/// it started matches `reached`; what it had said on stderr.
fn kill_when(deployed: &Deployed, args: &[&str], what: &str, timeout: Duration, reached: impl Fn(&Value) -> bool) -> String {
    let since = deployed.cluster.nomad.job_versions("main-postgres").len();
    let mut run = deployed.pgnomad_command(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    wait_until(what, timeout, || deployed.cluster.nomad.job_versions("main-postgres").iter().skip(since).any(&reached));
    run.kill().unwrap();
    text(&run.wait_with_output().unwrap().stderr)
}

#[test]
fn an_in_place_restore_on_nomad_goes_back_to_the_target_or_puts_the_data_back_and_ends_on_the_plain_job() {
    let deployed = Deployed::new(StackDriver::Docker, 0.2);
    deployed.run_until_healthy();
    let full = json_of("pgnomad backup --type full", &deployed.pgnomad(&["backup", "--type", "full", "--json"]));
    assert_eq!(full["type"], "full", "{full}");

    // Rows A, a time T, rows B.
    let t = deployed.rows_a_time_rows_b();
    let mut timeline_before = deployed.timeline().expect("a leader's timeline");

    // Without --yes (and no terminal to ask): refused, nothing stopped.
    let unconfirmed = deployed.pgnomad(&["restore", "--in-place", "--to-time", &t]);
    assert_eq!(unconfirmed.status.code(), Some(1), "{}", text(&unconfirmed.stderr));
    assert!(text(&unconfirmed.stderr).contains("not confirmed: an in-place restore stops main"), "{}", text(&unconfirmed.stderr));
    let outside = deployed.pgnomad(&["restore", "--in-place", "--yes", "--to-time", "2020-01-01T00:00:00Z"]);
    assert_eq!(outside.status.code(), Some(1), "{}", text(&outside.stderr));
    assert!(text(&outside.stderr).contains("is outside the recoverable window"), "{}", text(&outside.stderr));
    assert!(deployed.healthy_topology().is_ok(), "refusals stop nothing");

    // A restore that fails once the members have stopped (a transaction recovery never
    // reaches): the data is put back, the member that led first; then the groups roll to the
    // stack's own job. pgnomad is killed during that roll, and the same command run again
    // finishes the revert without stopping the members a second time: exit 3, and the
    // cluster runs on its data as it was, rows B and all.
    let leader_before = deployed.leader().unwrap();
    let versions_before = deployed.cluster.nomad.job_versions("main-postgres").len();
    let failing = ["restore", "--in-place", "--yes", "--to-xid", "4000000000"];
    let rolling = |v: &Value| {
        let groups = v["TaskGroups"].as_array().unwrap();
        let reverting = groups.iter().filter(|g| g["Tasks"].to_string().contains("\"PGNOMAD_RESTORE_MODE\":\"revert\"")).count();
        let plain = groups.iter().filter(|g| !g["Tasks"].to_string().contains("restore-in-place")).count();
        reverting > 0 && plain > 0 && groups.iter().all(|g| g["Count"] != 0)
    };
    let killed = kill_when(&deployed, &failing, "the revert's roll to the stack's own job", Duration::from_secs(600), rolling);
    assert!(killed.contains("gave up on the bootstrap from the repository"), "it said why: {killed}");
    // The allocations of the groups already rolled: a second stop would replace them.
    let rolled: Vec<String> = deployed
        .cluster
        .nomad
        .all_allocations()
        .into_iter()
        .filter(|a| {
            a.job_id == "main-postgres" && a.desired_status == "run" && !a.group_spec["Tasks"].to_string().contains("restore-in-place")
        })
        .map(|a| a.id)
        .collect();
    assert!(!rolled.is_empty());
    let out = deployed.pgnomad(&failing);
    assert_eq!(out.status.code(), Some(3), "{}\n{}", text(&out.stderr), deployed.member_logs());
    let error = text(&out.stderr);
    eprintln!("the resumed revert:\n{error}");
    assert!(error.contains("resuming the in-place restore (to_xid 4000000000") && error.contains("in its revert phase"), "{error}");
    assert!(error.contains("the pre-restore data is back on every member"), "{error}");
    assert!(error.contains("failed in an earlier run") && error.contains("runs again on its pre-restore data"), "{error}");
    let live: Vec<String> =
        deployed.cluster.nomad.all_allocations().into_iter().filter(|a| a.desired_status == "run").map(|a| a.id).collect();
    assert!(rolled.iter().all(|id| live.contains(id)), "the resumed revert replaced a rolled group's allocation: {rolled:?} vs {live:?}");
    wait_until("every member healthy after the failed restore", Duration::from_secs(120), || deployed.healthy_topology().is_ok());
    let rows = deployed.app_sql("SELECT phase, count(*) FROM pitr GROUP BY phase ORDER BY phase");
    assert_eq!(text(&rows.stdout).trim(), "A|50\nB|30", "the pre-restore data, unchanged");
    // Later timelines of the same history: the member that led is promoted again on its data
    // (Patroni starts a former primary as a standby until it holds the leader key), and the
    // roll back to the stack's own job ends with a switchover.
    let timeline = deployed.timeline().unwrap();
    assert!(timeline >= timeline_before, "{timeline} after {timeline_before}");
    for (volume, entries) in volume_entries(&deployed) {
        // The reverted attempt's marker stays (an empty file): a restarted allocation must not
        // empty the DCS again.
        assert!(!entries.iter().any(|e| e.contains("pre-restore") || e.ends_with(".failed")), "{volume} still has {entries:?}");
    }
    // The member that led came back alone first (the others at count 0), so that none behind
    // it took the leader key.
    let versions = deployed.cluster.nomad.job_versions("main-postgres");
    let alone: Vec<Vec<&str>> = versions[versions_before..]
        .iter()
        .map(|v| v["TaskGroups"].as_array().unwrap().iter().filter(|g| g["Count"] != 0).map(|g| g["Name"].as_str().unwrap()).collect())
        .filter(|placed: &Vec<&str>| placed.len() == 1)
        .collect();
    assert_eq!(alone, vec![vec![leader_before.as_str()]], "one registration placed only {leader_before}");
    let now = tasks_of_job(&deployed);
    assert!(now.iter().all(|tasks| !tasks.contains(&"restore-in-place".to_owned())), "{now:?}");
    // The backup schedules were off while it ran (a backup fired then would only fail), and
    // are on again.
    for (job, on, paused) in backup_schedules(&deployed) {
        assert!(on && paused == 1, "{job}: schedule on {on}, versions with it off {paused}");
    }

    // A backup running (its container paused as it starts, so that it runs on): refused
    // before anything stops, the schedules on again; the backup then ends well.
    let (container, backup) = {
        let mut events = std::process::Command::new("docker")
            .args(["events", "--filter", "event=start", "--format", "{{.Actor.Attributes.name}}"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (started, names) = std::sync::mpsc::channel();
        let stdout = events.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
                let _ = started.send(line);
            }
        });
        let backup = deployed.pgnomad_command(&["backup", "--type", "full"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        // Paused first, asked about after: the forced child's container (`backup-ctl`'s
        // dispatches run a task of the same name, and are let go).
        let paused = loop {
            let name = names.recv_timeout(Duration::from_secs(120)).expect("the forced backup's container started");
            if !name.starts_with("backup-backup-") {
                continue;
            }
            let pause = std::process::Command::new("docker").args(["pause", &name]).output().unwrap();
            let forced = deployed
                .cluster
                .nomad
                .all_allocations()
                .into_iter()
                .any(|a| name.ends_with(&a.id[..8]) && a.job_id.starts_with("main-backup-full/periodic-"));
            if forced {
                assert_ok("pausing the forced backup", &pause);
                break name;
            }
            if pause.status.success() {
                // Let go at once; a run the double stopped meanwhile (a stopped container is
                // no longer paused, a removed one is gone) needs nothing more.
                let unpause = std::process::Command::new("docker").args(["unpause", &name]).output().unwrap();
                let inspect = std::process::Command::new("docker").args(["inspect", "-f", "{{.State.Paused}}", &name]).output().unwrap();
                let still_paused = inspect.status.success() && text(&inspect.stdout).trim() == "true";
                assert!(unpause.status.success() || !still_paused, "a backup-ctl run left paused: {}", text(&unpause.stderr));
            }
        };
        events.kill().unwrap();
        events.wait().unwrap();
        (paused, backup)
    };
    let refused = deployed.pgnomad(&["restore", "--in-place", "--yes", "--to-time", &t]);
    assert_ok("unpausing the backup", &std::process::Command::new("docker").args(["unpause", &container]).output().unwrap());
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("a backup of main is running (main-backup-full/periodic-"), "{}", text(&refused.stderr));
    for (job, on, paused) in backup_schedules(&deployed) {
        assert!(on && paused == 2, "{job}: schedule on {on}, versions with it off {paused}");
    }
    let backup = backup.wait_with_output().unwrap();
    assert!(backup.status.success(), "the backup the restore waited out: {}", text(&backup.stderr));
    assert!(deployed.healthy_topology().is_ok(), "the refusal stopped nothing");

    timeline_before = timeline;
    let versions_before = deployed.cluster.nomad.job_versions("main-postgres").len();

    // Interrupted: pgnomad killed once the restore's job is registered (each member moving
    // its data aside, the one that led restoring from the repository).
    let preparing_everywhere = |v: &Value| {
        v["TaskGroups"].as_array().unwrap().iter().all(|g| g["Tasks"].to_string().contains("\"PGNOMAD_RESTORE_MODE\":\"prepare\""))
    };
    let restore = ["restore", "--in-place", "--yes", "--to-time", &t];
    kill_when(&deployed, &restore, "the restore's job registered", Duration::from_secs(300), preparing_everywhere);
    // While it is part-way, another target is refused, naming the one in progress.
    let other = deployed.pgnomad(&["restore", "--in-place", "--yes", "--to-xid", "1234"]);
    assert_eq!(other.status.code(), Some(1), "{}", text(&other.stderr));
    assert!(
        text(&other.stderr).contains("stopped part-way, in its prepare phase, and this one asks for to_xid 1234"),
        "{}",
        text(&other.stderr)
    );

    // Its backup schedules stay off, and a backup asked meanwhile is refused, saying why.
    for (job, on, _) in backup_schedules(&deployed) {
        assert!(!on, "{job}'s schedule is on while the restore is part-way");
    }
    let backup = deployed.pgnomad(&["backup", "--type", "full"]);
    assert_eq!(backup.status.code(), Some(1), "{}", text(&backup.stderr));
    assert!(
        text(&backup.stderr).contains("the schedule of main-backup-full is paused") && text(&backup.stderr).contains("restore --in-place"),
        "{}",
        text(&backup.stderr)
    );

    // The same target again: the earlier attempt is resumed. It is killed in turn during the
    // finish's first roll (a member group moved to the job removing the data set aside, the
    // others still on the restore's), and the third run carries the finish to its end.
    let mode_of = |g: &Value| {
        let tasks = g["Tasks"].to_string();
        ["prepare", "finish"].into_iter().find(|m| tasks.contains(&format!("\"PGNOMAD_RESTORE_MODE\":\"{m}\"")))
    };
    let part_finished = |v: &Value| {
        let modes: Vec<Option<&str>> = v["TaskGroups"].as_array().unwrap().iter().map(mode_of).collect();
        modes.contains(&Some("finish")) && modes.contains(&Some("prepare"))
    };
    let killed = kill_when(&deployed, &restore, "the finish's first member group rolled", Duration::from_secs(600), part_finished);
    assert!(killed.contains("the restore succeeded: removing pgdata.pre-restore-"), "killed in the finish: {killed}");
    let out = deployed.pgnomad(&["restore", "--in-place", "--yes", "--to-time", &t, "--json"]);
    assert!(text(&out.stderr).contains("in its finish phase"), "{}", text(&out.stderr));
    if !out.status.success() {
        eprintln!("stderr:\n{}\nmembers:\n{}", text(&out.stderr), deployed.member_logs());
    }
    let restored = json_of("pgnomad restore --in-place", &out);
    eprintln!("in-place restore: {restored}\n{}", text(&out.stderr));
    let kept = restored["kept"].as_str().unwrap();
    let attempt = kept.strip_prefix("pgdata.pre-restore-").and_then(|k| k.split(' ').next()).unwrap_or_else(|| panic!("{kept}")).to_owned();
    assert!(restored["timeline"].as_u64().unwrap() > timeline_before, "a new timeline after the restore: {restored}");
    assert_eq!(restored["resumed"].as_str(), Some(attempt.as_str()), "the killed run's attempt, resumed: {restored}");

    // Exactly rows A, through PgBouncer; writes go on; two replicas stream, one synchronous.
    let rows = deployed.app_sql("SELECT phase, count(*) FROM pitr GROUP BY phase ORDER BY phase");
    assert_ok("rows after the restore", &rows);
    assert_eq!(text(&rows.stdout).trim(), "A|50", "the cluster holds exactly rows A");
    assert_ok("a write after the restore", &deployed.app_sql("INSERT INTO pitr VALUES (1000, 'after')"));
    wait_until("every member healthy after the restore", Duration::from_secs(120), || deployed.healthy_topology().is_ok());
    // It archives on, into its own stanza, on the new timeline.
    let segment = deployed.archive_current_wal(Duration::from_secs(120));
    assert!(u64::from_str_radix(&segment[..8], 16).unwrap() > timeline_before, "{segment} on the new timeline");

    // The data moved aside while it ran is gone, the restored data in its place.
    for (volume, entries) in volume_entries(&deployed) {
        assert!(entries.contains(&"pgdata".to_owned()), "{volume}: {entries:?}");
        let own = format!(".restore-{attempt}-");
        assert!(!entries.iter().any(|e| e.contains("pre-restore") || e.starts_with(&own)), "{volume} still has {entries:?}");
    }
    // The registrations: the restore's job (every group with the restore-in-place task), the
    // rolls to the one removing the data moved aside and back to the stack's own job, which
    // has no such task.
    let versions = deployed.cluster.nomad.job_versions("main-postgres");
    let during: Vec<&Value> = versions.iter().skip(versions_before).collect();
    let restoring = during
        .iter()
        .find(|v| {
            v["TaskGroups"].as_array().unwrap().iter().all(|g| g["Tasks"].to_string().contains("\"PGNOMAD_RESTORE_MODE\":\"prepare\""))
        })
        .unwrap_or_else(|| panic!("no version with every group preparing: {during:#?}"));
    assert!(restoring["TaskGroups"].to_string().contains(&format!("\"PGNOMAD_RESTORE_ATTEMPT\":\"{attempt}\"")));
    assert!(during.iter().any(|v| v["TaskGroups"].to_string().contains("\"PGNOMAD_RESTORE_MODE\":\"finish\"")), "no finishing version");
    let now = tasks_of_job(&deployed);
    assert!(now.iter().all(|tasks| !tasks.contains(&"restore-in-place".to_owned()) && tasks.contains(&"patroni".to_owned())), "{now:?}");
    let plan = deployed.pgnomad(&["plan", "--json"]);
    let plan = json_of("pgnomad plan", &plan);
    let postgres = plan["jobs"].as_array().unwrap().iter().find(|j| j["id"] == "main-postgres").cloned().unwrap_or_default();
    assert_eq!(postgres["change"], "unchanged", "after the restore the stack's own job runs: {postgres}");
    // The backup jobs too: their schedules are on again, as the stack has them.
    for (job, on, paused) in backup_schedules(&deployed) {
        assert!(on && paused == 3, "{job}: schedule on {on}, versions with it off {paused}");
        let planned = plan["jobs"].as_array().unwrap().iter().find(|j| j["id"] == job.as_str()).cloned().unwrap_or_default();
        assert_eq!(planned["change"], "unchanged", "{planned}");
    }
}
