//! What pgnomad reads from `pgbackrest info --output=json`: each stanza, its status, its
//! backups and the WAL range archived. A model without I/O, as pgBackRest 2.45 writes it
//! (`src/command/info/info.c`); keys pgnomad does not read are ignored.

use serde::{Deserialize, Serialize};

/// The whole answer: one entry per stanza.
pub type Info = Vec<Stanza>;

#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot read the output of `pgbackrest info --output=json`: {0}\nhint: run it by hand to see what it printed; pgnomad reads pgBackRest 2.x's JSON")]
pub struct InfoError(String);

/// Decodes the output of `pgbackrest info --output=json`.
pub fn parse_info(json: &[u8]) -> Result<Info, InfoError> {
    serde_json::from_slice(json).map_err(|e| InfoError(e.to_string()))
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Stanza {
    pub name: String,
    /// `none` or `aes-256-cbc`.
    pub cipher: String,
    pub status: StanzaStatus,
    pub archive: Vec<ArchiveRange>,
    /// Oldest first, as pgBackRest lists them.
    pub backup: Vec<Backup>,
    pub db: Vec<Database>,
    pub repo: Vec<Repo>,
}

impl Stanza {
    pub fn is_ok(&self) -> bool {
        self.status.code == 0
    }

    /// The newest backup, of any type.
    pub fn latest_backup(&self) -> Option<&Backup> {
        self.backup.iter().max_by_key(|b| b.timestamp.stop)
    }
}

/// `code` 0 is "ok"; pgBackRest's other codes: 1 missing stanza path, 2 no valid backups,
/// 3 missing stanza data, 4 different cipher, 5 database mismatch, 6 mixed, 99 other.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct StanzaStatus {
    pub code: i64,
    pub message: String,
    pub lock: Lock,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Lock {
    pub backup: LockHeld,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct LockHeld {
    pub held: bool,
}

/// The WAL archived for one database of the stanza.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct ArchiveRange {
    /// `<major>-<db id>`, as `15-1`.
    pub id: String,
    pub min: Option<String>,
    pub max: Option<String>,
    pub database: DatabaseRef,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct DatabaseRef {
    pub id: u64,
    #[serde(rename = "repo-key")]
    pub repo_key: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Backup {
    /// As `20261202-005916F` or `20261202-005916F_20261202-005923D`.
    pub label: String,
    /// `full`, `diff` or `incr`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The backup this one depends on (`null` for a full backup).
    pub prior: Option<String>,
    pub reference: Option<Vec<String>>,
    pub timestamp: Timestamps,
    pub archive: WalRange,
    pub lsn: LsnRange,
    pub info: BackupSizes,
    pub database: DatabaseRef,
    /// Whether page checksum errors were found (pgBackRest 2.36+).
    pub error: Option<bool>,
    pub backrest: BackrestVersion,
}

/// Unix seconds.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct Timestamps {
    pub start: i64,
    pub stop: i64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct WalRange {
    pub start: Option<String>,
    pub stop: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct LsnRange {
    pub start: Option<String>,
    pub stop: Option<String>,
}

/// Bytes: `size` of the database at backup time, `delta` copied by this backup; `repository`
/// the same in the repository (after compression).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct BackupSizes {
    pub size: u64,
    pub delta: u64,
    pub repository: RepoSizes,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RepoSizes {
    pub size: u64,
    pub delta: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct BackrestVersion {
    pub format: u64,
    pub version: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Database {
    pub id: u64,
    #[serde(rename = "repo-key")]
    pub repo_key: u64,
    #[serde(rename = "system-id")]
    pub system_id: u64,
    /// The PostgreSQL major version, as `15`.
    pub version: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Repo {
    pub key: u64,
    pub cipher: String,
    pub status: RepoStatus,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RepoStatus {
    pub code: i64,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_real_info_with_a_full_and_a_diff_backup() {
        // Written by pgBackRest 2.45 after stanza-create, a full and a diff backup.
        let info = parse_info(include_bytes!("../tests/pgbackrest-info/info-full-diff.json")).unwrap();
        let [stanza] = info.as_slice() else { panic!("one stanza expected: {info:?}") };
        assert_eq!((stanza.name.as_str(), stanza.is_ok(), stanza.status.message.as_str()), ("main", true, "ok"));
        let kinds: Vec<&str> = stanza.backup.iter().map(|b| b.kind.as_str()).collect();
        assert_eq!(kinds, ["full", "diff"]);
        let latest = stanza.latest_backup().unwrap();
        assert_eq!(latest.prior.as_deref(), Some(stanza.backup[0].label.as_str()));
        assert!(latest.timestamp.stop >= latest.timestamp.start);
        assert_eq!(stanza.db[0].version, "15");
        assert_eq!(stanza.archive[0].id, "15-1");
        assert!(stanza.archive[0].max.is_some());
    }

    #[test]
    fn reads_a_missing_stanza() {
        let info = parse_info(include_bytes!("../tests/pgbackrest-info/info-missing-stanza.json")).unwrap();
        assert!(!info[0].is_ok());
        assert_eq!(info[0].status.message, "missing stanza path");
        assert!(info[0].latest_backup().is_none());
    }

    #[test]
    fn a_wrongly_typed_answer_is_an_error_with_a_hint() {
        let error = parse_info(br#"[{"name": 3}]"#).unwrap_err().to_string();
        assert!(error.starts_with("cannot read the output of `pgbackrest info --output=json`: invalid type"), "{error}");
        assert!(error.contains("hint: run it by hand"), "{error}");
    }
}
