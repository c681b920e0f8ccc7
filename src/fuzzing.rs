//! Entry points for the fuzz targets in `fuzz/` and for the replay of their
//! corpora as ordinary tests (`tests/it/fuzz_replay.rs`): each takes
//! arbitrary bytes and must neither panic nor break the invariant it states.

use std::sync::OnceLock;

use prost::Message;

use crate::{
    config::Config,
    domain::{
        permissions::Catalogue,
        routes::{DotSegments, RouteTable},
        secret,
        time::Timestamp,
        token::{LifetimePolicy, NewToken, validate_check_query},
    },
    proto,
    store::TokenQuery,
};

/// The token parser: anything may be presented as a token.
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if secret::parse(text).is_some() {
        // Only the exact shape passes: prefix, 43 + 6 base62 characters.
        assert_eq!(text.len(), secret::SECRET_LEN);
        assert!(text.is_ascii());
    }
}

/// Route rules like the ones the README shows, in both dot-segment modes.
fn tables() -> &'static [RouteTable; 2] {
    static TABLES: OnceLock<[RouteTable; 2]> = OnceLock::new();
    TABLES.get_or_init(|| {
        let text = r#"
[ext_authz]
org_id = { header = "x-org-id" }
[[ext_authz.routes]]
methods = ["GET"]
path = "/v2/workspaces/{ws}/transformations/**"
permission = "transformations:read"
workspace_id = { capture = "ws" }
[[ext_authz.routes]]
path = "/v2/admin/*"
permission = "audit_logs:read"
"#;
        let catalogue = Catalogue::default();
        let compile = |dots: &str| {
            let mut config = Config::from_toml(text).unwrap_or_default();
            config.ext_authz.dot_segments = toml::Value::String(dots.into())
                .try_into()
                .unwrap_or_default();
            config
                .ext_authz
                .compile(&catalogue)
                .map(|policy| policy.routes)
                .unwrap_or_else(|_| RouteTable::new(Vec::new(), DotSegments::Reject))
        };
        [compile("reject"), compile("resolve")]
    })
}

/// The path normalizer and the route matcher: the first byte picks the
/// dot-segment mode and the method, the rest is the request target.
pub fn route(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(target) = std::str::from_utf8(rest) else {
        return;
    };
    let table = &tables()[usize::from(selector & 1)];
    let method = if selector & 2 == 0 { "GET" } else { "POST" };
    if let Ok(path) = table.normalize(target) {
        // A normalized path never carries what could mean something else
        // upstream: no empty, `.` or `..` segment, no slash inside a segment.
        for segment in path.segments() {
            assert!(!segment.is_empty() && segment != "." && segment != "..");
            assert!(!segment.contains('/'));
        }
        if let Some(matched) = table.find(method, &path) {
            // A capture is a whole segment of the path.
            for (_, value) in &matched.captures {
                assert!(path.segments().iter().any(|s| s == value));
            }
        }
    }
}

/// Every request message, decoded from wire bytes and converted into domain
/// types as the handlers do: the first byte picks the message.
pub fn request(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let catalogue = Catalogue::default();
    match selector % 4 {
        0 => {
            if let Ok(message) = proto::IssueTokenRequest::decode(bytes)
                && let Ok(new) = NewToken::try_from(message)
            {
                let policy = LifetimePolicy {
                    personal_max: None,
                    service_max: None,
                    personal_requires_expiry: false,
                };
                let _ = new.validate(&catalogue, &policy, Timestamp::now());
            }
        }
        1 => {
            if let Ok(message) = proto::ListTokensRequest::decode(bytes) {
                let _ = TokenQuery::try_from(message);
            }
        }
        2 => {
            if let Ok(message) = proto::CheckRequest::decode(bytes) {
                let _ = secret::parse(&message.token);
                let _ = validate_check_query(
                    &catalogue,
                    &message.permission,
                    &message.org_id,
                    &message.workspace_id,
                );
            }
        }
        _ => {
            if let Ok(message) = proto::RevokeAllRequest::decode(bytes) {
                let _ = crate::domain::service::RevokeAllSelector::try_from(message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzzed_route_tables_hold_their_routes() {
        for table in tables() {
            assert_eq!(table.routes().len(), 2);
        }
        let mut data = vec![0u8];
        data.extend_from_slice(b"/v2/workspaces/ws-1/transformations/x");
        route(&data);
        let path = tables()[0]
            .normalize("/v2/workspaces/ws-1/transformations/x")
            .unwrap();
        assert!(tables()[0].find("GET", &path).is_some());
    }
}
