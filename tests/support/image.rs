//! The image `pgnomad/postgres:<major>`, built for real on this machine with nothing pulled.
//!
//! The engine has no registry, so the base is made here: `debootstrap --variant=minbase
//! bookworm` from the mirror the host's apt uses (cached in `/var/cache/pgnomad-tests`),
//! imported as `pgnomad/base:bookworm`. The image is then built from the users' own
//! `packs/image/Dockerfile` with `BASE=pgnomad/base:bookworm` and `PG_SOURCE=debian`, so
//! `install.sh` takes Debian's `postgresql-<major>` instead of PGDG's: one recipe for both.
//!
//! The image carries a hash of its recipe (Dockerfile, install.sh, suite, mirror, apt
//! sources, build arguments) as the label `pgnomad.recipe` and is rebuilt only when the
//! hash differs. Concurrent callers (test threads and test binaries) are serialised by a
//! process-wide mutex and a `flock` on the cache directory's lock file.
//!
//! ```ignore
//! let image = postgres_image(15);                  // "pgnomad/postgres:15", built if needed
//! ```
//!
//! Nothing skips: a missing Docker engine, debootstrap or root is a panic saying what to fix.

use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use sha2::{Digest, Sha256};

pub const POSTGRES_REPO: &str = "pgnomad/postgres";
pub const BASE_IMAGE: &str = "pgnomad/base:bookworm";
pub const RECIPE_LABEL: &str = "pgnomad.recipe";
const BASE_LABEL: &str = "pgnomad.base";
const SUITE: &str = "bookworm";
const VARIANT: &str = "minbase";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const HOST_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
/// Bump to force a rebuild when the way the image is built changes outside the hashed files.
const BUILDER_VERSION: &str = "pgnomad-image-builder 1";

pub fn cache_dir() -> PathBuf {
    std::env::var_os("PGNOMAD_TEST_CACHE").map_or_else(|| PathBuf::from("/var/cache/pgnomad-tests"), PathBuf::from)
}

fn context_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packs/image")
}

static BUILD: Mutex<()> = Mutex::new(());

/// The tag `pgnomad/postgres:<major>`, after making sure that image exists and was built
/// from the current recipe (building it, and its base, if not). Panics with what to fix
/// when Docker, debootstrap or the Debian mirror is missing, or the build fails.
pub fn postgres_image(major: u32) -> String {
    let tag = format!("{POSTGRES_REPO}:{major}");
    let _process = BUILD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    require_docker();
    let apt = AptSource::of_host();
    let recipe = recipe_hash(major, &apt);
    if label(&tag, RECIPE_LABEL).as_deref() == Some(recipe.as_str()) {
        return tag;
    }
    let _machine = FileLock::acquire(&cache_dir().join("lock"));
    // Another test binary may have built it while this one waited for the lock.
    if label(&tag, RECIPE_LABEL).as_deref() == Some(recipe.as_str()) {
        return tag;
    }
    ensure_base(&apt);
    let old_id = image_id(&tag);
    let log = cache_dir().join(format!("build-postgres-{major}.log"));
    let started = Instant::now();
    eprintln!("image: building {tag} (recipe {}) from {}, log in {}", &recipe[..12], context_dir().display(), log.display());
    let mut build = Command::new("docker");
    build
        .args(["build", "--network", "host", "--force-rm"])
        .args(["--build-arg", &format!("BASE={BASE_IMAGE}")])
        .args(["--build-arg", "PG_SOURCE=debian"])
        .args(["--build-arg", &format!("PG_MAJOR={major}")])
        .args(["--label", &format!("{RECIPE_LABEL}={recipe}")])
        .args(["-t", &tag])
        .arg(context_dir());
    run_logged(build, &log, &format!("docker build of {tag}"));
    eprintln!("image: built {tag} in {:.0?}", started.elapsed());
    let new_id = image_id(&tag);
    if let Some(old) = old_id.filter(|old| Some(old) != new_id.as_ref()) {
        // The replaced image is now untagged; remove it unless a container still uses it.
        let _ = Command::new("docker").args(["image", "rm", &old]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
    assert_eq!(label(&tag, RECIPE_LABEL).as_deref(), Some(recipe.as_str()), "{tag} was built but does not carry its recipe label");
    tag
}

/// The image ID of `reference`, or None if the engine has no such image.
pub fn image_id(reference: &str) -> Option<String> {
    let out = docker(&["image", "inspect", "-f", "{{.Id}}", reference]);
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The recipe hash the current sources give for `major` (what `pgnomad.recipe` must be).
pub fn current_recipe(major: u32) -> String {
    recipe_hash(major, &AptSource::of_host())
}

/// A label of an image, or None if there is no such image or label.
pub fn label(reference: &str, key: &str) -> Option<String> {
    let format = format!("{{{{ index .Config.Labels \"{key}\" }}}}");
    let out = docker(&["image", "inspect", "-f", &format, reference]);
    let value = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !value.is_empty() && value != "<no value>").then_some(value)
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().unwrap_or_else(|e| panic!("cannot run `docker {}`: {e}", args.join(" ")))
}

fn require_docker() {
    let out = match Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output() {
        Ok(out) => out,
        Err(e) => panic!(
            "the Docker CLI `docker` cannot be run ({e}): the image tests build pgnomad/postgres with a real Docker Engine \
             (apt-get install docker.io, then start dockerd)"
        ),
    };
    if !out.status.success() {
        panic!(
            "the Docker Engine is not reachable: {}\nthe image tests need a running dockerd (e.g. `systemctl start docker` or \
             `dockerd &`; DOCKER_HOST if it listens elsewhere)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

/// Where Debian packages come from: the host apt's mirror, and its deb822 sources (copied
/// into the base so the build's apt uses the same mirror and suites).
struct AptSource {
    mirror: String,
    sources: Option<String>,
}

impl AptSource {
    fn of_host() -> AptSource {
        let sources = std::fs::read_to_string(HOST_SOURCES).ok();
        let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
        let mirror =
            sources.as_deref().and_then(deb822_mirror).or_else(|| one_line_mirror(&list)).unwrap_or_else(|| DEFAULT_MIRROR.to_owned());
        AptSource { mirror, sources }
    }
}

/// The first URI of a deb822 stanza whose suites include bookworm.
fn deb822_mirror(text: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza.lines().find_map(|l| l.strip_prefix(name).map(|rest| rest.split_whitespace().map(str::to_owned).collect::<Vec<_>>()))
        };
        let suites = field("Suites:")?;
        suites.iter().any(|s| s == SUITE).then(|| field("URIs:")?.into_iter().next())?
    })
}

/// The mirror of a `deb URL bookworm …` line.
fn one_line_mirror(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().filter(|w| !w.starts_with('[')).collect();
        (words.len() >= 3 && words[0] == "deb" && words[2] == SUITE).then(|| words[1].to_owned())
    })
}

fn base_hash(apt: &AptSource) -> String {
    let mut h = Sha256::new();
    for part in [BUILDER_VERSION, SUITE, VARIANT, &apt.mirror, apt.sources.as_deref().unwrap_or("")] {
        h.update(part.len().to_le_bytes());
        h.update(part.as_bytes());
    }
    hex(&h.finalize())
}

fn recipe_hash(major: u32, apt: &AptSource) -> String {
    let mut h = Sha256::new();
    let read = |name: &str| {
        let path = context_dir().join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    };
    let parts: [Vec<u8>; 5] = [
        base_hash(apt).into_bytes(),
        read("Dockerfile"),
        read("install.sh"),
        format!("BASE={BASE_IMAGE} PG_SOURCE=debian PG_MAJOR={major}").into_bytes(),
        BUILDER_VERSION.as_bytes().to_vec(),
    ];
    for part in parts {
        h.update(part.len().to_le_bytes());
        h.update(&part);
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `pgnomad/base:bookworm` from the cached root file system (debootstrapped if missing).
fn ensure_base(apt: &AptSource) {
    let hash = base_hash(apt);
    if label(BASE_IMAGE, BASE_LABEL).as_deref() == Some(hash.as_str()) {
        return;
    }
    let root = ensure_rootfs(apt, &hash);
    let started = Instant::now();
    let log = cache_dir().join("import-base.log");
    let mut import = Command::new("bash");
    import
        .args(["-c", "set -euo pipefail; tar -C \"$1\" --numeric-owner -c . | docker import --change \"LABEL $2\" - \"$3\"", "import"])
        .arg(&root)
        .arg(format!("{BASE_LABEL}={hash}"))
        .arg(BASE_IMAGE);
    run_logged(import, &log, &format!("import of {} as {BASE_IMAGE}", root.display()));
    eprintln!("image: imported {BASE_IMAGE} in {:.0?}", started.elapsed());
}

/// The debootstrapped root, made in a temporary directory and renamed when complete, so an
/// interrupted debootstrap is never taken for a cache.
fn ensure_rootfs(apt: &AptSource, hash: &str) -> PathBuf {
    let cache = cache_dir();
    let root = cache.join(format!("rootfs-{SUITE}"));
    let stamp = cache.join(format!("rootfs-{SUITE}.recipe"));
    if root.is_dir() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(hash) {
        return root;
    }
    let debootstrap = ["/usr/sbin/debootstrap", "/usr/bin/debootstrap"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or_else(|| panic!("`debootstrap` is not installed: the image tests make their base with it (apt-get install debootstrap)"));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("debootstrap must run as root to make {BASE_IMAGE}: run the image tests as root");
    }
    let partial = cache.join(format!("rootfs-{SUITE}.partial"));
    for dir in [&partial, &root] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("cannot remove {}: {e}", dir.display()));
        }
    }
    let _ = std::fs::remove_file(&stamp);
    let started = Instant::now();
    let log = cache.join(format!("debootstrap-{SUITE}.log"));
    eprintln!("image: debootstrap {SUITE} from {} into {}, log in {}", apt.mirror, root.display(), log.display());
    let mut cmd = Command::new(debootstrap);
    cmd.args([&format!("--variant={VARIANT}"), SUITE]).arg(&partial).arg(&apt.mirror);
    run_logged(cmd, &log, &format!("debootstrap of {SUITE} from {}", apt.mirror));
    if let Some(sources) = &apt.sources {
        // The host's sources (mirror, updates, security) replace debootstrap's one line.
        let _ = std::fs::remove_file(partial.join("etc/apt/sources.list"));
        std::fs::write(partial.join("etc/apt/sources.list.d/debian.sources"), sources).expect("write debian.sources into the root");
    }
    // debootstrap leaves the downloaded .debs behind; the image does not need them.
    if let Ok(entries) = std::fs::read_dir(partial.join("var/cache/apt/archives")) {
        for entry in entries.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "deb")) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    std::fs::rename(&partial, &root).unwrap_or_else(|e| panic!("cannot rename {} to {}: {e}", partial.display(), root.display()));
    std::fs::write(&stamp, hash).expect("write the rootfs stamp");
    eprintln!("image: debootstrap took {:.0?}", started.elapsed());
    root
}

/// Runs `cmd` with its output in `log`; panics with the log's tail if it fails.
fn run_logged(mut cmd: Command, log: &Path, what: &str) {
    let file = std::fs::File::create(log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone log handle"))
        .stderr(file)
        .status()
        .unwrap_or_else(|e| panic!("cannot start the {what}: {e}"));
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
        panic!(
            "the {what} failed ({status}); last lines of {}:\n{}\n(the Debian mirror must be reachable; Docker must run builds with --network host)",
            log.display(),
            tail.join("\n")
        );
    }
}

/// An exclusive `flock` on a file, held until dropped: one image build per machine at a time.
struct FileLock(std::fs::File);

impl FileLock {
    fn acquire(path: &Path) -> FileLock {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("cannot open the lock file {}: {e}", path.display()));
        // SAFETY: the descriptor is open for the life of `file`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            panic!("flock {}: {}", path.display(), std::io::Error::last_os_error());
        }
        let _ = writeln!(&file, "{}", std::process::id());
        FileLock(file)
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: as above; closing the file would release the lock too.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}
