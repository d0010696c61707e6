//! Access tokens, as issue 15 made them (`corralctl tokens create --space S`, followed from the
//! `definitions` topic by [`ApiTokens`]), checked in front of every route that names a space:
//! the Profile API (`/v1/spaces/{space}/...`) and the admin API (`/spaces/{space}/...`). The
//! token travels as Segment's Profile API takes it (HTTP Basic, the token as the user name, no
//! password) or as `Authorization: Bearer <token>` (as Segment's Public API takes it).
//!
//! Refusals are in the shape of the API asked: the Profile API's
//! `{"error": {"code": "authentication_error", "message"}}` or the Public API's
//! `{"errors": [{"type": "unauthorized"|"forbidden", "message"}]}`; 401 for no or an unknown
//! token, 403 for a token of another space. `/readyz` stays open.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use corral_runtime::auth::{ApiTokens, Denied};
use serde_json::json;

/// Which API a path belongs to, and the space it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addressed {
    Profile(String),
    Admin(String),
    Neither,
}

/// `/v1/spaces/{space}/...` (Profile API) or `/spaces/{space}/...` (admin API).
pub fn addressed(path: &str) -> Addressed {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let decode = |s: &str| percent_decode(s);
    match parts.as_slice() {
        ["v1", "spaces", space, ..] if !space.is_empty() => Addressed::Profile(decode(space)),
        ["spaces", space, ..] if !space.is_empty() => Addressed::Admin(decode(space)),
        _ => Addressed::Neither,
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The refusal for `denied` in the shape of the API addressed.
pub fn refusal(at: &Addressed, denied: &Denied) -> Response {
    let status = match denied {
        Denied::OtherSpace { .. } => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    let message = denied.to_string();
    match at {
        Addressed::Admin(_) => {
            let kind = if status == StatusCode::FORBIDDEN {
                "forbidden"
            } else {
                "unauthorized"
            };
            (
                status,
                Json(json!({"errors": [{"type": kind, "message": message}]})),
            )
                .into_response()
        }
        _ => (
            status,
            Json(json!({"error": {"code": "authentication_error", "message": message}})),
        )
            .into_response(),
    }
}

/// `router` behind `tokens` (see the module doc).
pub fn protect(router: Router, tokens: Arc<ApiTokens>) -> Router {
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let tokens = tokens.clone();
            async move {
                let at = addressed(req.uri().path());
                let space = match &at {
                    Addressed::Profile(s) | Addressed::Admin(s) => s.clone(),
                    Addressed::Neither => return next.run(req).await,
                };
                let auth = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                match tokens.check(auth.as_deref(), &space) {
                    Ok(()) => next.run(req).await,
                    Err(denied) => refusal(&at, &denied),
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_api_and_space() {
        assert_eq!(
            addressed("/v1/spaces/default/collections/users/profiles/user_id:a/traits"),
            Addressed::Profile("default".into())
        );
        assert_eq!(
            addressed("/spaces/my%20space/audiences"),
            Addressed::Admin("my space".into())
        );
        assert_eq!(addressed("/readyz"), Addressed::Neither);
        assert_eq!(addressed("/v1/spaces/"), Addressed::Neither);
        assert_eq!(percent_decode("a%2Bb%"), "a+b%");
    }
}
