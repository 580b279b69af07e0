//! Render benchmark: `cargo bench --bench render`.
//!
//! Measures, with medians over repeated runs:
//! - compile + render of the default stack in one process (in-process time),
//! - a whole `pgnomad render` process for the default stack (spawn to exit),
//! - compile + render of 10, 50 and 100 clusters in one process (time and peak RSS, to show
//!   growth is linear); RSS is measured in a fresh child process per size.

use std::process::Command;
use std::time::{Duration, Instant};

use pgnomad::config::Packs;
use pgnomad::render::{self, Format};
use pgnomad::stack::{self, Source};

fn stack_text(name: &str) -> String {
    format!("cluster \"{name}\" {{}}\npostgres {{\n  members = 3\n}}\n")
}

fn render_clusters(count: usize) -> usize {
    let packs = Packs::default();
    let mut bytes = 0;
    for i in 0..count {
        let source = Source::new("bench.hcl", stack_text(&format!("c{i}")));
        let checked = stack::load(&source).expect("bench stacks are valid");
        let artifacts = pgnomad::compile::compile(&checked.stack, &packs).expect("bench stacks compile");
        bytes += render::files(&artifacts, Format::Both).iter().map(|f| f.text.len()).sum::<usize>();
    }
    bytes
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut()) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect(),
    )
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok()).unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Child mode: render N clusters, print peak RSS in KiB.
    if let Some(pos) = args.iter().position(|a| a == "--rss-child") {
        let count: usize = args[pos + 1].parse().unwrap();
        render_clusters(count);
        println!("{}", peak_rss_kib());
        return;
    }

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("render benchmark (medians)");
    let default = time(50, || {
        render_clusters(1);
    });
    println!("default stack, in process:      {:8.2} ms (50 runs)", ms(default));

    let binary = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/pgnomad");
    if binary.is_file() {
        let dir = std::env::temp_dir().join(format!("pgnomad-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pgnomad.hcl"), stack_text("main")).unwrap();
        let process = time(30, || {
            let status = Command::new(&binary).args(["render", "--out", "out"]).current_dir(&dir).output().unwrap();
            assert!(status.status.success());
        });
        println!("default stack, whole process:   {:8.2} ms (30 runs of `pgnomad render`)", ms(process));
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("default stack, whole process:   (build with `cargo build --release` first)");
    }

    let exe = std::env::current_exe().unwrap();
    for count in [10, 50, 100] {
        let runs = if count == 100 { 7 } else { 11 };
        let elapsed = time(runs, || {
            render_clusters(count);
        });
        let rss: Vec<u64> = (0..3)
            .map(|_| {
                let out = Command::new(&exe).args(["--rss-child", &count.to_string()]).output().unwrap();
                String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
            })
            .collect();
        let mut rss_sorted = rss.clone();
        rss_sorted.sort();
        println!(
            "{count:3} clusters, in process:     {:8.2} ms ({runs} runs), {:6.2} ms per cluster, peak RSS {:5.1} MB",
            ms(elapsed),
            ms(elapsed) / count as f64,
            rss_sorted[1] as f64 / 1024.0
        );
    }
}
