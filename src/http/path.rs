//! Path parameters, percent-decoded exactly once.
//!
//! Clients put ids in paths percent-encoded (RFC 3986 §2.1): PouchDB and CouchDB clients send
//! `notes/2026`, `a+b` and `50%off` as `notes%2F2026`, `a%2Bb` and `50%25off`, and CouchDB
//! decodes each path segment once. actix-web's router decodes every escape *except* `%25`,
//! `%2F` and `%2B` before matching (so an encoded `/` never splits a segment), and
//! `match_info()` hands out that half-decoded text. Reading it as the id would keep those three
//! escapes (`x%2Fy` stored literally); decoding it again blindly would decode some bytes twice.
//!
//! [`param`] is the one way a handler reads a route parameter (`{id}`, `{doctype}`, `{code}`,
//! `{index}`...): every route that carries an id or a name in its path uses it, and routes added
//! later must too. It answers 400 for a path CouchDB refuses as well: a `%` not followed by two
//! hex digits (`50%off` sent as is), or escapes that do not decode to UTF-8.

use actix_web::HttpRequest;
use percent_encoding::percent_decode_str;

use super::{ApiError, ApiResult};

/// The route parameter `name`, decoded exactly once; a literal `+` stays `+` (paths are not
/// form-encoded). 400 when the request path holds a malformed escape or decodes to invalid
/// UTF-8; a route without that parameter gives the empty string. The reason never repeats the
/// value: some parameters are secrets (invitation codes).
pub fn param(req: &HttpRequest, name: &str) -> ApiResult<String> {
    check_escapes(req.uri().path())?;
    let half_decoded = req.match_info().get(name).unwrap_or_default();
    // With every escape of the raw path well-formed, the router's pass decoded all but `%25`,
    // `%2F` and `%2B`, never produced a `%`, and (the whole path being UTF-8 once decoded) lost
    // nothing to its lossy UTF-8 conversion. So the only `%` left are those three escapes, each
    // followed by its own two hex digits, and one more pass decodes each byte exactly once.
    percent_decode_str(half_decoded)
        .decode_utf8()
        .map(|v| v.into_owned())
        .map_err(|_| ApiError::bad_request("the request path does not decode to UTF-8"))
}

/// Refuses a raw path with a `%` not followed by two hex digits, or whose escapes do not decode
/// to UTF-8 (CouchDB refuses both with 400).
fn check_escapes(raw: &str) -> ApiResult<()> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while let Some(offset) = bytes[i..].iter().position(|&b| b == b'%') {
        let at = i + offset;
        let hex = |k: usize| bytes.get(at + k).is_some_and(u8::is_ascii_hexdigit);
        if !(hex(1) && hex(2)) {
            return Err(ApiError::bad_request(
                "invalid percent-encoding in the request path: a % must start an escape like %25 (RFC 3986)",
            ));
        }
        i = at + 3;
    }
    percent_decode_str(raw)
        .decode_utf8()
        .map(drop)
        .map_err(|_| ApiError::bad_request("the request path does not decode to UTF-8"))
}

#[cfg(test)]
mod tests {
    use actix_web::{test as actix_test, web, App, HttpRequest, HttpResponse};
    use proptest::prelude::*;

    use super::param;

    async fn echo(req: HttpRequest) -> HttpResponse {
        match param(&req, "v") {
            Ok(v) => HttpResponse::Ok().body(v),
            Err(e) => HttpResponse::BadRequest().body(e.to_string()),
        }
    }

    /// Status and body of `GET uri` on a router with `/one/{v}/end` and `/rest/{v:.+}`, as
    /// actix-web's real router matches them.
    async fn get(uri: &str) -> (u16, String) {
        let app = actix_test::init_service(
            App::new().route("/one/{v}/end", web::get().to(echo)).route("/rest/{v:.+}", web::get().to(echo)),
        )
        .await;
        let resp = actix_test::call_service(&app, actix_test::TestRequest::get().uri(uri).to_request()).await;
        let status = resp.status().as_u16();
        let body = actix_test::read_body(resp).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[actix_web::test]
    async fn each_escape_is_decoded_once_and_literal_characters_stay() {
        let table = [
            ("notes%2F2026", "notes/2026"),
            ("a%2Bb", "a+b"),
            ("a+b", "a+b"),
            ("50%25off", "50%off"),
            ("%2525", "%25"),
            ("%252F", "%2F"),
            ("%25%32F", "%2F"),
            ("q%3Fx%23y", "q?x#y"),
            ("two%20words", "two words"),
            ("%C3%A9t%C3%A9", "été"),
            ("%F0%9F%98%80", "😀"),
            ("_local%2Fcheckpoint", "_local/checkpoint"),
            ("plain", "plain"),
        ];
        for (sent, id) in table {
            assert_eq!(get(&format!("/one/{sent}/end")).await, (200, id.to_owned()), "one segment: {sent}");
            assert_eq!(get(&format!("/rest/{sent}")).await, (200, id.to_owned()), "tail: {sent}");
        }
        // A raw `/` in a tail parameter stays a `/`.
        assert_eq!(get("/rest/a/b%2Fc").await, (200, "a/b/c".to_owned()));
    }

    #[actix_web::test]
    async fn malformed_escapes_and_invalid_utf8_are_refused() {
        for sent in ["50%off", "%", "a%2", "%%341", "%zz", "%FF", "%C3", "%C3%28", "%ED%A0%80"] {
            for uri in [format!("/one/{sent}/end"), format!("/rest/{sent}")] {
                let (status, reason) = get(&uri).await;
                assert_eq!(status, 400, "{uri} gave {reason}");
            }
        }
        // Some parameters are secrets (invitation codes): the reason never repeats them.
        let (status, reason) = get("/one/s3cr3t%zz/end").await;
        assert_eq!(status, 400);
        assert!(!reason.contains("s3cr3t"), "the reason repeats the value: {reason}");
    }

    /// Routes added later must read their parameters through `param` too: anything else sees
    /// `%2F`, `%2B` and `%25` still encoded (or, through `web::Path`, decodes lossily).
    #[test]
    fn no_handler_reads_route_parameters_around_param() {
        fn visit(dir: &std::path::Path, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    visit(&path, found);
                } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("http/path.rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for (n, line) in text.lines().enumerate() {
                        let code = line.split("//").next().unwrap_or_default();
                        if code.contains("match_info()") || code.contains("web::Path<") {
                            found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                        }
                    }
                }
            }
        }
        let mut found = Vec::new();
        visit(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut found);
        assert!(found.is_empty(), "use http::path::param instead:\n{}", found.join("\n"));
    }

    /// Characters a client may leave unencoded in a path segment (RFC 3986 `pchar` minus `%`).
    fn may_stay_raw(c: char) -> bool {
        c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@".contains(c)
    }

    proptest! {
        #[test]
        fn any_string_encoded_any_way_comes_back_as_itself(
            s in "\\PC{1,24}|[/+% ?#%A-Fa-f0-9é😀]{1,24}",
            mask in proptest::collection::vec(any::<bool>(), 24),
        ) {
            let mut sent = String::new();
            for (k, c) in s.chars().enumerate() {
                if may_stay_raw(c) && !mask[k] {
                    sent.push(c);
                } else {
                    let mut buf = [0; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        sent.push_str(&format!("%{b:02X}"));
                    }
                }
            }
            let got = actix_web::rt::System::new().block_on(get(&format!("/one/{sent}/end")));
            prop_assert_eq!(got, (200, s.clone()), "sent {}", sent);
        }
    }
}
