//! Nomad's errors as typed values: the status code and the plain-text body Nomad sent, plus a
//! hint that tells the user what to do about it.

use super::request::{Method, Request};

/// Prefix Nomad puts on every check-and-set failure of job register (api.RegisterEnforceIndexErrPrefix).
pub const ENFORCE_INDEX_ERR_PREFIX: &str = "Enforcing job modify index";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Nomad answered {status}: {}{}", body.trim_end(), hint.as_deref().map(|h| format!("\nhint: {h}")).unwrap_or_default())]
pub struct NomadError {
    pub status: u16,
    /// Nomad's error bodies are plain text (command/agent/http.go wrap()).
    pub body: String,
    pub hint: Option<String>,
}

/// What a failed request was trying to do; decides which hint fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    JobRegister,
    VariableCheckAndSet,
    Other,
}

impl RequestKind {
    pub fn of(request: &Request) -> Self {
        let is_write = matches!(request.method, Method::Put | Method::Post | Method::Delete);
        if is_write && request.path.starts_with("/v1/var/") && request.has_query("cas") {
            RequestKind::VariableCheckAndSet
        } else if is_write
            && (request.path == "/v1/jobs" || (request.path.starts_with("/v1/job/") && request.path.matches('/').count() == 3))
        {
            RequestKind::JobRegister
        } else {
            RequestKind::Other
        }
    }
}

impl NomadError {
    pub fn new(status: u16, body: impl Into<String>, kind: RequestKind) -> Self {
        let body = body.into();
        let hint = hint_for(status, &body, kind);
        NomadError { status, body, hint }
    }

    /// True when the job changed on the server since the index the caller planned against.
    pub fn is_enforce_index_conflict(&self) -> bool {
        self.body.starts_with(ENFORCE_INDEX_ERR_PREFIX)
    }

    pub fn is_not_found(&self) -> bool {
        self.status == 404
    }

    pub fn is_cas_conflict(&self) -> bool {
        self.status == 409
    }

    pub fn is_no_leader(&self) -> bool {
        self.body.contains("No cluster leader")
    }
}

fn hint_for(status: u16, body: &str, kind: RequestKind) -> Option<String> {
    let hint = match status {
        403 => "check NOMAD_TOKEN (or --token): the token must exist and its ACL policy must allow this operation in this namespace",
        409 if kind == RequestKind::VariableCheckAndSet => {
            "the variable already exists (or changed since it was read); it was not overwritten — read it and decide, or remove it first"
        }
        500 if body.starts_with(ENFORCE_INDEX_ERR_PREFIX) => {
            "someone changed the job since the plan; re-run `pgnomad plan` and review the new diff"
        }
        500 if body.contains("No cluster leader") => {
            "the Nomad servers have no leader (quorum lost or an election in progress); wait, then check `nomad server members`"
        }
        400 => "Nomad rejected the request as invalid; its message above says what to change",
        500 if kind == RequestKind::JobRegister && body.contains("error") && body.contains("occurred") => {
            "Nomad rejected the job during validation; its message above says what to change"
        }
        404 => "not found: check the name and NOMAD_NAMESPACE / --namespace",
        _ => return None,
    };
    Some(hint.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_follow_status_and_message() {
        let conflict =
            NomadError::new(500, "Enforcing job modify index 3: job exists with conflicting job modify index: 7", RequestKind::JobRegister);
        assert!(conflict.is_enforce_index_conflict());
        assert!(conflict.hint.unwrap().contains("re-run"));
        assert!(NomadError::new(403, "Permission denied", RequestKind::Other).hint.unwrap().contains("NOMAD_TOKEN"));
        let cas = Request::new(Method::Put, "/v1/var/nomad/jobs/pg").with_query("cas", "0");
        let err = NomadError::new(409, "{}", RequestKind::of(&cas));
        assert!(err.hint.unwrap().contains("already exists"));
        assert_eq!(RequestKind::of(&Request::new(Method::Post, "/v1/job/pg")), RequestKind::JobRegister);
        assert_eq!(RequestKind::of(&Request::new(Method::Post, "/v1/job/pg/plan")), RequestKind::Other);
    }
}
