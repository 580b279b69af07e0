//! Backups an operator can trust, on `pgnomad dev` with real pgBackRest, Patroni and
//! PostgreSQL 15: backups of each type listed from pgBackRest's JSON with the recoverable
//! window, a second backup refused while one runs, and a point-in-time restore into a
//! 3-member clone beside the untouched source.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support_dev::*;
use crate::support_procs::*;

#[test]
fn two_stack_files_in_one_directory_have_their_own_dev_state_dirs() {
    let _one = one_dev_cluster();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for (file, cluster) in [("pgnomad.hcl", "main"), ("clone.hcl", "clone")] {
        std::fs::write(dir.path().join(file), format!("cluster \"{cluster}\" {{}}\n")).unwrap();
        let out = pgnomad().args(["dev", "status", "-f"]).arg(dir.path().join(file)).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        let expected = format!("no dev stack in {}", dir.path().join(".pgnomad/dev").join(cluster).display());
        assert!(text(&out.stderr).contains(&expected), "{}", text(&out.stderr));
    }
}

/// A dev stack started from a stack file with the default state dir, destroyed on drop.
struct Clone {
    stack_file: PathBuf,
}

impl Clone {
    fn dev(&self, args: &[&str]) -> Command {
        let mut cmd = pgnomad();
        cmd.arg("dev").arg(args[0]).arg("-f").arg(&self.stack_file).args(&args[1..]).stdin(Stdio::null());
        cmd
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&run_ok("dev status of the clone", &mut self.dev(&["status", "--json"]))).unwrap()
    }

    fn app_sql(&self, pgpass: &Path, sql: &str) -> String {
        let status = self.status();
        let port = status["pgbouncer"]["address"].as_str().unwrap().rsplit_once(':').unwrap().1.to_owned();
        let out = Command::new("psql")
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &port, "-U", "app", "-d", "app", "-c", sql])
            .env("PGPASSFILE", pgpass)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{sql} on the clone: {}", text(&out.stderr));
        text(&out.stdout).trim().to_owned()
    }
}

impl Drop for Clone {
    fn drop(&mut self) {
        let _ = self.dev(&["destroy", "--yes"]).output();
    }
}

fn both(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

#[test]
fn dev_backups_list_each_type_and_a_point_in_time_restore_makes_a_streaming_clone_beside_the_source() {
    let _one = one_dev_cluster();
    let dev = DevCluster::up("src", 3);
    let leader = dev.primary().expect("a primary");
    dev.wait_streaming(leader, Duration::from_secs(60));
    wait_until("the source's stanza", Duration::from_secs(60), || dev.pgbackrest(leader, &["info"]).status.success());
    dev.app_sql("CREATE TABLE rows (id bigint PRIMARY KEY, part text NOT NULL)");
    dev.app_sql("INSERT INTO rows SELECT g, 'before' FROM generate_series(1, 100) g");

    // One backup of each type, each saying which member its files came from: a standby.
    let mut labels = Vec::new();
    for kind in ["full", "diff", "incr"] {
        let out = dev.dev(&["backup", kind, "--json"]).output().unwrap();
        assert!(out.status.success(), "dev backup {kind}: {}", both(&out));
        let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(done["type"], kind);
        assert_eq!(done["primary"], format!("member-{leader}"));
        assert_ne!(done["copied_from"], done["primary"], "from_standby copies from a standby");
        labels.push(done["label"].as_str().unwrap().to_owned());
    }

    // A second backup while one runs is refused with a clear message, exit 1.
    let mut running = dev.dev(&["backup", "full"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let lock = dev.state_dir.join("backup.lock");
    let holder = format!("pid {}", running.id());
    wait_until("the first backup to hold the lock", Duration::from_secs(20), || std::fs::read_to_string(&lock).is_ok_and(|t| t == holder));
    let second = dev.dev(&["backup", "diff"]).output().unwrap();
    assert_eq!(second.status.code(), Some(1), "{}", both(&second));
    assert!(text(&second.stderr).contains("another backup of this stack is running"), "{}", both(&second));
    assert!(running.wait().unwrap().success(), "the first backup completes");

    // The list, from pgBackRest's JSON: every backup and the recoverable window.
    let out = dev.dev(&["backups", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", both(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let backups = list["backups"].as_array().unwrap();
    let kinds: Vec<&str> = backups.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["full", "diff", "incr", "full"]);
    assert_eq!(backups[..3].iter().map(|b| b["label"].as_str().unwrap()).collect::<Vec<_>>(), labels);
    for b in backups {
        assert!(b["database_size"].as_u64().unwrap() > 0 && b["stop"].as_i64() >= b["start"].as_i64(), "{b}");
        assert!(b["wal_start"].is_string() && b["wal_stop"].is_string(), "{b}");
    }
    // The repository is encrypted (`cipher`, on by default) with a pass kept as a secret in
    // the state directory, never in the stack file: its info files are ciphertext.
    assert_eq!(list["cipher"], "aes-256-cbc", "{list:#}");
    let pass = dev.secrets()["repo_cipher_pass"].as_str().unwrap().to_owned();
    assert!(pass.len() >= 32 && !std::fs::read_to_string(&dev.stack_file).unwrap().contains(&pass));
    let info = std::fs::read(dev.state_dir.join("repo/backup/src/backup.info")).unwrap();
    assert!(info.starts_with(b"Salted__"), "backup.info is encrypted: {:?}", String::from_utf8_lossy(&info[..40.min(info.len())]));
    let window = &list["window"];
    assert_eq!(window["oldest"], backups[0]["stop"]);
    assert_eq!(window["newest_from_archive"], true, "{list:#}");
    assert!(window["newest"].as_i64() >= backups[3]["stop"].as_i64(), "{list:#}");

    // Rows A, a recorded time T, rows B.
    dev.app_sql("INSERT INTO rows SELECT g, 'A' FROM generate_series(101, 200) g");
    // pgBackRest restores to T only from a backup that ended in an earlier second.
    std::thread::sleep(Duration::from_millis(1100));
    let t = dev.app_sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
    std::thread::sleep(Duration::from_millis(1100));
    dev.app_sql("INSERT INTO rows SELECT g, 'B' FROM generate_series(201, 300) g");

    // A time before the oldest backup is refused, naming the window; nothing is written.
    let clone_file = dev.dir.path().join("clone.hcl");
    let early = dev.dev(&["restore", "--to-time", "2001-01-01T00:00:00Z", "--into", "clone"]).output().unwrap();
    assert_eq!(early.status.code(), Some(1), "{}", both(&early));
    assert!(text(&early.stderr).contains("is outside the recoverable window"), "{}", both(&early));
    assert!(!clone_file.exists(), "a refused restore writes no stack file");

    let out = dev.dev(&["restore", "--to-time", &t, "--into", "clone", "--json"]).output().unwrap();
    let clone = Clone { stack_file: clone_file.clone() };
    assert!(out.status.success(), "dev restore: {}\n{}", both(&out), clone_logs(&dev.dir.path().join(".pgnomad/dev/clone")));
    let stack = std::fs::read_to_string(&clone_file).unwrap();
    assert!(stack.contains("cluster \"clone\"") && stack.contains("restore {\n  from    = \"src\""), "{stack}");

    // The clone holds exactly rows A (and what came before), through its own PgBouncer.
    let clone_pgpass = dev.dir.path().join(".pgnomad/dev/clone/client/pgpass");
    assert_eq!(clone.app_sql(&clone_pgpass, "SELECT part || ':' || count(*) FROM rows GROUP BY part ORDER BY part"), "A:100\nbefore:100");
    // Three members, one leader, both replicas streaming from it.
    wait_until("the clone's replicas to stream", Duration::from_secs(60), || {
        let status = clone.status();
        let members = status["members"].as_array().unwrap();
        let leader = members.iter().position(|m| m["role"] == "leader");
        members.len() == 3
            && leader.is_some_and(|l| {
                let run = dev.dir.path().join(format!(".pgnomad/dev/clone/member-{l}/run"));
                let port = members[l]["pg_port"].as_u64().unwrap() as u16;
                member_sql(&run, port, "postgres", "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").as_deref()
                    == Some("2")
            })
    });
    // It takes writes, and archives into its own stanza: a backup of it lists stanza clone.
    clone.app_sql(&clone_pgpass, "INSERT INTO rows VALUES (1000, 'clone')");
    let out = clone.dev(&["backup", "full"]).output().unwrap();
    assert!(out.status.success(), "backup of the clone: {}", both(&out));
    let out = clone.dev(&["backups", "--json"]).output().unwrap();
    let clone_list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((clone_list["stanza"].as_str(), clone_list["backups"].as_array().map(Vec::len)), (Some("clone"), Some(1)), "{clone_list}");

    // The source is untouched: rows B are there, it archives and backs up as before.
    assert_eq!(dev.app_sql("SELECT count(*) FROM rows WHERE part = 'B'"), "100");
    assert_eq!(dev.app_sql("SELECT count(*) FROM rows WHERE part = 'clone'"), "0");
    let out = dev.dev(&["backup", "incr"]).output().unwrap();
    assert!(out.status.success(), "a source backup after the restore: {}", both(&out));
    let check = dev.pgbackrest(dev.primary().unwrap(), &["check"]);
    assert!(check.status.success(), "the source's archive after the restore: {}", both(&check));

    // Restoring again into the same name is refused: a restore never overwrites a cluster.
    let again = dev.dev(&["restore", "--to-time", &t, "--into", "clone"]).output().unwrap();
    assert_eq!(again.status.code(), Some(1), "{}", both(&again));
    assert!(text(&again.stderr).contains("the restore target cluster clone already exists"), "{}", both(&again));
    drop(clone);
}

fn clone_logs(state: &Path) -> String {
    let mut all = std::fs::read_to_string(state.join("supervisor.log")).unwrap_or_default();
    for i in 0..3 {
        let log = state.join(format!("member-{i}/log/patroni.log"));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        all.push_str(&format!("\n--- {} (end)\n{}", log.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
    }
    all
}

#[test]
fn dev_backup_errors_say_whether_the_repository_is_unreachable_or_holds_another_databases_stanza() {
    let _one = one_dev_cluster();
    // Two one-member clusters with the same name: what a cluster made afresh under an old
    // name meets when the old repository is still there.
    let old = DevCluster::up("dup", 1);
    let new = DevCluster::up("dup", 1);
    for dev in [&old, &new] {
        wait_until("the stanza", Duration::from_secs(60), || dev.pgbackrest(0, &["info"]).status.success());
        let out = dev.dev(&["backup", "full"]).output().unwrap();
        assert!(out.status.success(), "{}", both(&out));
    }

    // A repository pgBackRest cannot read: exit 2, "unreachable", and what to check.
    let repo = new.state_dir.join("repo");
    let mode = |m: u32| std::fs::set_permissions(&repo, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap();
    mode(0o000);
    let out = new.dev(&["backups"]).output().unwrap();
    mode(0o750);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    let error = text(&out.stderr);
    assert!(error.contains(&format!("the repository {} is unreachable", repo.display())) && error.contains("Permission denied"), "{error}");

    // The old cluster's stanza in the new one's repository: refused, exit 1, naming the trap.
    for part in ["archive", "backup"] {
        let target = repo.join(part).join("dup");
        std::fs::remove_dir_all(&target).unwrap();
        run_ok("copy the old stanza", Command::new("cp").arg("-a").arg(old.state_dir.join("repo").join(part).join("dup")).arg(&target));
    }
    let out = new.dev(&["backup", "full"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(text(&out.stderr).contains("the stanza in the repository belongs to another database"), "{}", both(&out));
}

/// The template of `dest` in member-0's patroni task of a rendered postgres job.
fn member_template(job: &serde_json::Value, dest: &str) -> String {
    let tasks = job["TaskGroups"][0]["Tasks"].as_array().unwrap();
    let patroni = tasks.iter().find(|t| t["Name"] == "patroni").unwrap();
    let templates = patroni["Templates"].as_array().unwrap();
    templates.iter().find(|t| t["DestPath"] == dest).unwrap_or_else(|| panic!("no template {dest}"))["EmbeddedTmpl"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_restore_stack_renders_jobs_that_bootstrap_from_the_source_clusters_repository_host() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clone.hcl");
    std::fs::write(&file, "cluster \"clone\" {}\nrestore {\n  from    = \"main\"\n  to_time = \"2026-12-01T10:42:07Z\"\n}\n").unwrap();
    let out = pgnomad().args(["render", "-f"]).arg(&file).arg("--out").arg(dir.path().join("rendered")).output().unwrap();
    assert!(out.status.success(), "{}", both(&out));
    let rendered = dir.path().join("rendered");
    let job: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rendered.join("jobs/clone-postgres.json")).unwrap()).unwrap();
    let job = job.get("Job").cloned().unwrap_or(job);

    // Patroni's bootstrap restores the source's stanza with restore.conf, which reaches the
    // source's repository host with the source's certificate and cipher pass, copied into the
    // clone's own variable.
    let patroni = member_template(&job, "secrets/patroni.yml");
    assert!(
        patroni.contains("command: \"pgbackrest --config=/secrets/restore.conf --stanza=main --type=time '--target=2026-12-01 10:42:07.000000+00' restore\""),
        "{patroni}"
    );
    assert!(patroni.contains("--stanza=clone --delta --type=standby restore"), "replicas from the clone's own repository: {patroni}");
    let restore = member_template(&job, "secrets/restore.conf");
    for line in [
        "repo1-host=main-repo.service.consul",
        "repo1-host-port={{ with service \"main-repo\" }}{{ with index . 0 }}{{ .Port }}{{ end }}{{ end }}",
        "repo1-host-cert-file=/secrets/tls/restore-client.crt",
        "repo1-cipher-pass={{ with nomadVar \"nomad/jobs/clone-postgres\" }}{{ .restore_cipher_pass }}{{ end }}",
        "[main]",
    ] {
        assert!(restore.lines().any(|l| l == line), "restore.conf lacks {line:?}:\n{restore}");
    }
    assert_eq!(
        member_template(&job, "secrets/tls/restore-client.key"),
        "{{ with nomadVar \"nomad/jobs/clone-postgres\" }}{{ .restore_tls_client_key }}{{ end }}"
    );
    // Its members are healthy only once the restore is done: Nomad's deadlines outlast one.
    assert_eq!(job["Update"]["HealthyDeadline"].as_u64(), Some(12 * 3600 * 1_000_000_000), "{}", job["Update"]);
    // The clone's own pgBackRest archives into its own stanza.
    let own = member_template(&job, "secrets/pgbackrest.conf");
    assert!(own.contains("\n[clone]\n") && own.contains("repo1-host=clone-repo.service.consul"), "{own}");

    // run learns where each copied key comes from; the operator's policy may read just those.
    let secrets: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(rendered.join("secrets.json")).unwrap()).unwrap();
    let postgres = secrets["secrets"].as_array().unwrap().iter().find(|s| s["job"] == "clone-postgres").unwrap();
    let sourced: Vec<&str> =
        postgres["keys"].as_array().unwrap().iter().filter(|k| k["origin"] == "source").map(|k| k["key"].as_str().unwrap()).collect();
    assert_eq!(sourced, ["restore_cipher_pass", "restore_tls_ca_crt", "restore_tls_client_crt", "restore_tls_client_key"]);
    let policy = std::fs::read_to_string(rendered.join("acl/clone-pgnomad.nomad.hcl")).unwrap();
    assert!(policy.contains("path \"nomad/jobs/main-postgres\" {\n      capabilities = [\"read\"]"), "{policy}");
    assert!(policy.contains("path \"pgnomad/main/tls\" {\n      capabilities = [\"read\"]"), "{policy}");

    // On Nomad the source is a cluster, read through its variables: a stack file is refused.
    std::fs::write(&file, "cluster \"clone\" {}\nrestore {\n  from    = \"pgnomad.hcl\"\n  to_time = \"2026-12-01T10:42:07Z\"\n}\n")
        .unwrap();
    let out = pgnomad().args(["render", "-f"]).arg(&file).arg("--out").arg(dir.path().join("again")).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(text(&out.stderr).contains("on Nomad `restore { from }` names the source cluster, not its stack file"), "{}", both(&out));
    assert!(!dir.path().join("again/jobs").exists(), "nothing is rendered");
}

/// Each member's data before an in-place restore, while it runs.
fn pre_restore_dirs(dev: &DevCluster) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = (0..dev.members).map(|i| dev.state_dir.join(format!("member-{i}/data.pre-restore"))).collect();
    dirs.push(dev.state_dir.join("etcd/data.pre-restore"));
    dirs.into_iter().filter(|d| d.exists()).collect()
}

#[test]
fn dev_restore_in_place_goes_back_to_a_time_and_a_failed_one_leaves_the_data_as_it_was() {
    let _one = one_dev_cluster();
    let dev = DevCluster::up("inplace", 3);
    let leader = dev.primary().expect("a primary");
    dev.wait_streaming(leader, Duration::from_secs(60));
    wait_until("the stanza", Duration::from_secs(60), || dev.pgbackrest(leader, &["info"]).status.success());
    dev.app_sql("CREATE TABLE rows (id bigint PRIMARY KEY, part text NOT NULL)");
    dev.app_sql("INSERT INTO rows SELECT g, 'A' FROM generate_series(1, 100) g");
    let out = dev.dev(&["backup", "full"]).output().unwrap();
    assert!(out.status.success(), "{}", both(&out));
    // pgBackRest restores to T only from a backup that ended in an earlier second.
    std::thread::sleep(Duration::from_millis(1100));
    let t = dev.app_sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
    std::thread::sleep(Duration::from_millis(1100));
    dev.app_sql("INSERT INTO rows SELECT g, 'B' FROM generate_series(101, 200) g");
    let timeline_before = dev.status()["members"][leader]["timeline"].as_u64().unwrap();
    let counts = "SELECT part || ':' || count(*) FROM rows GROUP BY part ORDER BY part";

    // Without --yes: refused, exit 1, and the cluster runs on.
    let out = dev.dev(&["restore", "--in-place", "--to-time", &t]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(text(&out.stderr).contains("not confirmed") && text(&out.stderr).contains("pass --yes"), "{}", both(&out));
    assert_eq!(dev.app_sql(counts), "A:100\nB:100");

    // A target outside the window is refused before anything stops.
    let out = dev.dev(&["restore", "--in-place", "--to-time", "2001-01-01T00:00:00Z", "--yes"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(text(&out.stderr).contains("is outside the recoverable window"), "{}", both(&out));

    // A restore that fails once the members are stopped (a transaction recovery never
    // reaches): exit 3, and the cluster is back on its data as it was, B rows and all.
    let out = dev.dev(&["restore", "--in-place", "--to-xid", "4000000000", "--yes"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}\n{}", both(&out), dev.logs());
    let error = text(&out.stderr);
    assert!(error.contains("the in-place restore failed") && error.contains("runs again on its pre-restore data"), "{error}");
    assert!(error.contains("data.pre-restore"), "it said where the old data was kept: {error}");
    assert_eq!(dev.app_sql(counts), "A:100\nB:100");
    assert_eq!(pre_restore_dirs(&dev), Vec::<PathBuf>::new());
    let leader = dev.primary().expect("a primary after the failed restore");
    dev.wait_streaming(leader, Duration::from_secs(90));

    // The restore to T, its first run killed once the data is set aside and the restore
    // under way (the supervisor, in its own session, goes on).
    let progress = dev.state_dir.join("restore-in-place.json");
    let mut first =
        dev.dev(&["restore", "--in-place", "--to-time", &t, "--yes"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_until("the restore under way", Duration::from_secs(120), || progress.exists());
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(pre_restore_dirs(&dev).len(), 4, "every member's data and the DCS's set aside");
    // While it is part-way another target is refused, naming the one in progress.
    let out = dev.dev(&["restore", "--in-place", "--to-xid", "1234", "--yes"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(text(&out.stderr).contains("stopped part-way, in its prepare phase, and this one asks for to_xid 1234"), "{}", both(&out));
    // The same target again resumes it: exactly rows A, three members streaming, writes
    // through PgBouncer.
    let out = dev.dev(&["restore", "--in-place", "--to-time", &t, "--yes", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", both(&out), dev.logs());
    let error = text(&out.stderr);
    assert!(error.contains("resuming the in-place restore") && error.contains("the restore succeeded: removing"), "{error}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["resumed"].is_string(), "{report}");
    assert!(!progress.exists(), "nothing left to resume");
    assert_eq!(pre_restore_dirs(&dev), Vec::<PathBuf>::new(), "the pre-restore data is removed once the restore succeeded");
    assert_eq!(dev.app_sql(counts), "A:100");
    let leader = dev.primary().expect("a primary after the restore");
    dev.wait_streaming(leader, Duration::from_secs(90));
    let timeline = dev.status()["members"][leader]["timeline"].as_u64().unwrap();
    assert!(timeline > timeline_before, "a new timeline: {timeline} after {timeline_before}");
    dev.app_sql("INSERT INTO rows SELECT g, 'C' FROM generate_series(101, 150) g");
    assert_eq!(dev.app_sql(counts), "A:100\nC:50");

    // It archives on the new timeline and backs up as before.
    let out = dev.dev(&["backup", "incr"]).output().unwrap();
    assert!(out.status.success(), "a backup after the restore: {}", both(&out));
    let check = dev.pgbackrest(leader, &["check"]);
    assert!(check.status.success(), "the archive after the restore: {}", both(&check));
    let archived = dev.member_sql(leader, "postgres", "SELECT last_archived_wal FROM pg_stat_archiver").unwrap();
    assert_eq!(u64::from_str_radix(&archived[..8], 16).unwrap(), timeline, "archived WAL on the new timeline: {archived}");
}

#[test]
fn a_failover_during_a_full_backup_ends_it_clearly_and_the_next_backup_and_the_archive_go_on_on_the_new_primary() {
    let _one = one_dev_cluster();
    let dev = DevCluster::up("fob", 3);
    let old = dev.primary().expect("a primary");
    dev.wait_streaming(old, Duration::from_secs(60));
    wait_until("the stanza", Duration::from_secs(60), || dev.pgbackrest(old, &["info"]).status.success());
    // About 120 MB: the backup copies for a few seconds.
    dev.app_sql("CREATE TABLE filler AS SELECT g AS id, repeat(md5(g::text), 8) AS pad FROM generate_series(1, 400000) g");
    let timeline_before = dev.status()["members"][old]["timeline"].as_u64().unwrap();

    let backup = dev.dev(&["backup", "full"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // pgBackRest has started the backup on the primary (pg_backup_start) and copies.
    wait_until("the backup to run on the primary", Duration::from_secs(60), || {
        dev.member_sql(old, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgBackRest [backup]%'")
            .as_deref()
            == Some("1")
    });
    let killed_at = std::time::Instant::now();
    kill9(dev.pid(old, "patroni_pid"));
    kill9(dev.pid(old, "postmaster_pid"));
    let out = backup.wait_with_output().unwrap();
    let new = dev.wait_new_primary(Some(old), Duration::from_secs(60));
    eprintln!("the backup ended {:?} after the kill: {}", killed_at.elapsed(), out.status);
    if !out.status.success() {
        // It failed, saying why and what to do; exit 3.
        assert_eq!(out.status.code(), Some(3), "{}", both(&out));
        let error = text(&out.stderr);
        assert!(error.contains("the primary was lost during the backup"), "{error}");
        assert!(error.contains("run the backup again"), "{error}");
    }

    // The next backup succeeds, on the new primary.
    dev.wait_streaming(new, Duration::from_secs(120));
    let out = dev.dev(&["backup", "full", "--json"]).output().unwrap();
    assert!(out.status.success(), "the backup after the failover: {}\n{}", both(&out), dev.logs());
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["primary"], format!("member-{new}"));
    let list: serde_json::Value = serde_json::from_slice(&dev.dev(&["backups", "--json"]).output().unwrap().stdout).unwrap();
    assert!(list["backups"].as_array().unwrap().iter().any(|b| b["label"] == done["label"]), "{list:#}");

    // WAL archiving goes on from the new primary, on its new timeline.
    let timeline = dev.status()["members"][new]["timeline"].as_u64().unwrap();
    assert!(timeline > timeline_before, "{timeline} after {timeline_before}");
    let check = dev.pgbackrest(new, &["check"]);
    assert!(check.status.success(), "the archive on the new primary: {}", both(&check));
    let archived = dev.member_sql(new, "postgres", "SELECT last_archived_wal FROM pg_stat_archiver").unwrap();
    assert_eq!(u64::from_str_radix(&archived[..8], 16).unwrap(), timeline, "archived WAL on the new timeline: {archived}");
    let ls = dev.pgbackrest(new, &["repo-ls", "archive/fob/15-1"]);
    assert!(
        text(&ls.stdout).contains(&format!("{timeline:08X}.history")),
        "the new timeline's history file is in the archive: {}",
        both(&ls)
    );
}

/// moto's S3 server, as tests/run-all installs it (a pinned venv in the test cache).
const MOTO: &str = "moto-5.2.5/bin/moto_server";

fn test_cache() -> PathBuf {
    std::env::var_os("PGNOMAD_TEST_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/cache/pgnomad-tests"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `curl -k` against the S3 server (self-signed certificate); the body.
fn s3_curl(args: &[&str]) -> String {
    run_ok(&format!("curl {args:?}"), Command::new("curl").args(["-sSfk", "--max-time", "10"]).args(args))
}

#[test]
fn a_dev_cluster_backs_up_into_a_real_s3_server_and_restores_from_it() {
    let _one = one_dev_cluster();
    let moto = test_cache().join(MOTO);
    assert!(moto.exists(), "moto's S3 server is not installed at {} (tests/run-all installs it from PyPI)", moto.display());
    let dir = postgres_tempdir();
    // pgBackRest speaks HTTPS only to S3, and fails against moto's own `--ssl` (Werkzeug's
    // server ends each TLS connection without close_notify: "TLS error … unexpected eof while
    // reading", measured with pgBackRest 2.45): moto serves plain HTTP on loopback and
    // HAProxy terminates TLS in front of it with a certificate made here, which pgBackRest
    // does not verify (verify_tls = false; the stack has no CA setting for S3).
    let (moto_port, port) = (free_port(), free_port());
    let mut cmd = Command::new(&moto);
    cmd.args(["-H", "127.0.0.1", "-p", &moto_port.to_string()]);
    let mut server = Guard::spawn("moto_server", cmd, dir.path().join("moto.log"));
    let (key, crt, pem) = (dir.path().join("s3.key"), dir.path().join("s3.crt"), dir.path().join("s3.pem"));
    run_ok(
        "openssl req",
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&crt),
    );
    std::fs::write(&pem, [std::fs::read(&crt).unwrap(), std::fs::read(&key).unwrap()].concat()).unwrap();
    let haproxy_cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &haproxy_cfg,
        format!(
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\nfrontend s3\n  bind 127.0.0.1:{port} ssl crt {}\n  default_backend moto\nbackend moto\n  server moto 127.0.0.1:{moto_port}\n",
            pem.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(require("haproxy", "haproxy"));
    cmd.arg("-f").arg(&haproxy_cfg).arg("-db");
    let mut tls = Guard::spawn("haproxy", cmd, dir.path().join("haproxy.log"));
    let endpoint = format!("https://127.0.0.1:{port}");
    wait_until("moto's S3 server behind HAProxy", Duration::from_secs(60), || {
        server.assert_running();
        tls.assert_running();
        Command::new("curl").args(["-sfk", "-o", "/dev/null", "--max-time", "2"]).arg(&endpoint).status().is_ok_and(|s| s.success())
    });
    s3_curl(&["-X", "PUT", &format!("{endpoint}/pgnomad")]);

    let stack_file = dir.path().join("pgnomad.hcl");
    let stack = stack_text("s3src", 1).replace(
        "backup {\n",
        &format!(
            "backup {{\n  repo {{\n    type       = \"s3\"\n    endpoint   = \"127.0.0.1:{port}\"\n    bucket     = \"pgnomad\"\n    region     = \"us-east-1\"\n    uri_style  = \"path\"\n    verify_tls = false\n  }}\n"
        ),
    );
    std::fs::write(&stack_file, &stack).unwrap();
    let dev = DevCluster::at(dir, stack_file.clone(), "s3src", 1);
    // The keys, from the operator's environment as for `run` (moto takes any).
    let keys = [("AWS_ACCESS_KEY_ID", "pgnomad-test"), ("AWS_SECRET_ACCESS_KEY", "pgnomad-test-secret")];
    let out = dev.dev(&["up", "--timeout", "150"]).envs(keys).output().unwrap();
    assert!(out.status.success(), "dev up on S3: {}\n{}\nmoto:\n{}", both(&out), dev.logs(), server.log_text());
    assert!(!dev.secrets()["s3_key_secret"].is_null(), "the keys are kept with the other secrets");
    wait_until("the stanza in S3", Duration::from_secs(60), || {
        text(&dev.pgbackrest(0, &["info", "--output=json"]).stdout).contains("\"code\":2")
    });

    dev.app_sql("CREATE TABLE rows (id bigint PRIMARY KEY, part text NOT NULL)");
    dev.app_sql("INSERT INTO rows SELECT g, 'A' FROM generate_series(1, 100) g");
    let out = dev.dev(&["backup", "full", "--json"]).output().unwrap();
    assert!(out.status.success(), "a backup into S3: {}\nmoto:\n{}", both(&out), server.log_text());
    let out = dev.dev(&["backups", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", both(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["backups"].as_array().unwrap().len(), 1, "{list:#}");
    assert_eq!(list["window"]["newest_from_archive"], true, "{list:#}");
    // The files are in the bucket: the backup's manifest and archived WAL.
    let objects = s3_curl(&[&format!("{endpoint}/pgnomad?list-type=2&prefix=pgbackrest/")]);
    let label = list["backups"][0]["label"].as_str().unwrap();
    assert!(objects.contains(&format!("pgbackrest/backup/s3src/{label}/backup.manifest")), "{objects}");
    assert!(objects.contains("pgbackrest/archive/s3src/15-1/"), "{objects}");

    // pgBackRest restores to T only from a backup that ended in an earlier second.
    std::thread::sleep(Duration::from_millis(1100));
    let t = dev.app_sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
    std::thread::sleep(Duration::from_millis(1100));
    dev.app_sql("INSERT INTO rows SELECT g, 'B' FROM generate_series(101, 200) g");
    let out = dev.dev(&["restore", "--to-time", &t, "--into", "s3clone"]).output().unwrap();
    let clone = Clone { stack_file: dev.dir.path().join("s3clone.hcl") };
    assert!(out.status.success(), "dev restore from S3: {}\n{}", both(&out), clone_logs(&dev.dir.path().join(".pgnomad/dev/s3clone")));
    let clone_pgpass = dev.dir.path().join(".pgnomad/dev/s3clone/client/pgpass");
    assert_eq!(clone.app_sql(&clone_pgpass, "SELECT part || ':' || count(*) FROM rows GROUP BY part ORDER BY part"), "A:100");
    // The clone archives into its own stanza in the same bucket.
    wait_until("the clone's WAL in S3", Duration::from_secs(60), || {
        s3_curl(&[&format!("{endpoint}/pgnomad?list-type=2&prefix=pgbackrest/archive/s3clone/")]).contains("<Key>")
    });
    drop(clone);
    drop(dev);
    drop(tls);
    drop(server);
}
