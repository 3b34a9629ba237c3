//! Admin access: operator RPCs (force a breaker, pause or drain a pool, inject
//! faults, replay dead letters, shut down) need `authorization: Bearer
//! <TPS_ADMIN_TOKEN>`. With no token configured they are disabled rather than
//! open. The comparison takes the same time whatever the guess, and neither
//! the token nor the guess is ever logged.

use tonic::metadata::MetadataMap;

#[derive(Clone)]
pub struct AdminToken(Option<String>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "AdminToken(set)"
        } else {
            "AdminToken(unset)"
        })
    }
}

impl AdminToken {
    pub fn new(token: Option<String>) -> Self {
        Self(token)
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Checks the `authorization` metadata of an admin call.
    pub fn check(&self, metadata: &MetadataMap, operation: &str) -> Result<(), tonic::Status> {
        let Some(expected) = &self.0 else {
            return Err(tonic::Status::permission_denied(format!(
                "{operation} is an admin operation and admin operations are disabled: set TPS_ADMIN_TOKEN"
            )));
        };
        let given = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            Ok(())
        } else {
            tracing::warn!(operation, "admin call refused: missing or wrong token");
            Err(tonic::Status::unauthenticated(format!(
                "{operation} needs `authorization: Bearer <admin token>`"
            )))
        }
    }
}

/// Equality whose time depends only on the lengths, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in b.iter().enumerate() {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ x);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(v: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", v.parse().unwrap());
        m
    }

    #[test]
    fn token_rules() {
        let t = AdminToken::new(Some("s3cret-token-0123456789".into()));
        assert!(
            t.check(&meta("Bearer s3cret-token-0123456789"), "x")
                .is_ok()
        );
        let e = t
            .check(&meta("Bearer s3cret-token-012345678"), "x")
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(!e.message().contains("s3cret"));
        assert_eq!(
            t.check(&MetadataMap::new(), "x").unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let off = AdminToken::new(None);
        assert_eq!(
            off.check(&meta("Bearer anything"), "x").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
