//! Stack files used across tests: the default stack and the variants every rendering
//! property must hold for.

use pgnomad::compile::{self, Artifacts};
use pgnomad::config::Packs;
use pgnomad::stack::{self, Source, Stack};

pub const DEFAULT: &str = "cluster \"main\" {}\n";

/// (name, stack file) for the default stack and its variants.
pub const VARIANTS: &[(&str, &str)] = &[
    ("default", DEFAULT),
    ("etcd", "cluster \"main\" {}\npatroni {\n  dcs = \"etcd3\"\n  etcd_hosts = [\"10.0.0.1:2379\", \"10.0.0.2:2379\", \"10.0.0.3:2379\"]\n}\n"),
    (
        "s3-repo",
        "cluster \"main\" {}\nbackup {\n  repo {\n    type = \"s3\"\n    endpoint = \"minio.service.consul:9000\"\n    bucket = \"pg-backups\"\n    region = \"eu-west-1\"\n    uri_style = \"path\"\n  }\n}\n",
    ),
    ("csi-volume-repo", "cluster \"main\" {}\nbackup {\n  repo {\n    type = \"volume\"\n    volume_type = \"csi\"\n    source = \"main-pgbackrest\"\n    shared = true\n  }\n}\n"),
    ("host-volumes", "cluster \"main\" {}\nstorage {\n  type = \"host\"\n}\n"),
    ("five-members", "cluster \"main\" {}\npostgres {\n  members = 5\n}\n"),
    ("pgadmin-off", "cluster \"main\" {}\npgadmin {\n  enabled = false\n}\n"),
    ("exec-driver", "cluster \"main\" {}\npostgres {\n  driver = \"exec\"\n}\n"),
    ("vault", "cluster \"main\" {}\nsecrets {\n  provider = \"vault\"\n  vault_role = \"pgnomad\"\n}\n"),
    (
        "lean",
        "cluster \"lean\" {\n  datacenters = [\"eu1\", \"eu2\"]\n  namespace = \"db\"\n}\npostgres {\n  members = 1\n  synchronous_mode = \"off\"\n  placement {\n    spread = \"node.datacenter\"\n  }\n}\n",
    ),
    ("no-backup-no-monitoring", "cluster \"main\" {}\nbackup {\n  enabled = false\n}\nmonitoring {\n  postgres_exporter = false\n}\npgbouncer {\n  enabled = false\n}\n"),
];

pub fn load(text: &str) -> Stack {
    let source = Source::new("test.hcl", text);
    match stack::load(&source) {
        Ok(checked) => checked.stack,
        Err(diagnostics) => panic!("{}", diagnostics.iter().map(|d| source.render(d)).collect::<String>()),
    }
}

pub fn compile(text: &str) -> Artifacts {
    compile::compile(&load(text), &Packs::default()).expect("the stack compiles")
}
