//! The feeds: `_changes` (normal and long-poll, by sequence) and `_all_docs` (by id), each
//! streamed page by page.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::auth::{Reach, Verb};
use crate::http::stream::{self, put_json, Step, PAGE_BYTES, PAGE_ROWS};
use crate::http::{parse_json, parse_raw_object, read_body, ApiError, ApiResult, AppState, Inst, Query};
use crate::store::doc::render_into;
use crate::store::{AllDocs, AllDocsQuery, AllDocsRow, ChangeRow, Changes, ChangesQuery, DocId, Doctype, Store};

use super::*;

fn parse_seq(s: &str) -> ApiResult<u64> {
    let s = s.trim().trim_matches('"');
    // CouchDB 2+ sequences look like `N-opaque`; ours are plain integers, but accept the prefix.
    let n = s.split('-').next().unwrap_or_default();
    n.parse::<u64>().map_err(|_| ApiError::bad_request("since must be a sequence number or now"))
}

/// `GET|POST /data/:doctype/_changes` — `since`, `limit`, `style=all_docs`, `include_docs`,
/// `feed=normal|longpoll` with `timeout`, `filter=_doc_ids` with `doc_ids` (query or body);
/// `descending=true` gets a 400 (not served, and never silently ignored).
/// Each document appears once, at its latest change (one changed while a long answer is being
/// written may appear again, at its new sequence: see [`ChangesFeed`]); scopes limited to some
/// ids see only those. `pending` is the number of rows after `last_seq` for the same filter and
/// scope (CouchDB's), which the store counts without reading them. The answer is written as it
/// is read (see `http::stream`).
pub(super) async fn changes(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let doctype = doctype_of(&req)?;
    let q = Query::of(&req)?;
    let (_, reach) = authorize(&inst, &req, &doctype, Verb::Get).await?;
    let state = req.app_data::<web::Data<AppState>>().map(|s| s.config.clone());
    let body = if req.method() == actix_web::http::Method::POST {
        let bytes = read_body(&req, payload, max_body(&req)).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            as_object(parse_json(&bytes)?, "the body")?
        }
    } else {
        Map::new()
    };
    let ids_param = match body.get("doc_ids") {
        Some(v) => Some(v.clone()),
        None => q.json("doc_ids")?,
    };
    let mut doc_ids = match (q.get("filter"), ids_param) {
        (Some("_doc_ids"), Some(ids)) => {
            let Value::Array(list) = ids else {
                return Err(ApiError::bad_request("doc_ids must be an array"));
            };
            let ids = list
                .iter()
                .map(|v| v.as_str().ok_or_else(|| ApiError::bad_request("doc_ids must hold strings")))
                .map(|s| s.and_then(|s| DocId::parse(s).map_err(ApiError::BadRequest)))
                .collect::<ApiResult<Vec<_>>>()?;
            Some(ids)
        }
        (Some("_doc_ids"), None) => return Err(ApiError::bad_request("filter=_doc_ids needs doc_ids")),
        (Some(f), _) => return Err(ApiError::bad_request(format!("unsupported filter {f}"))),
        (None, _) => None,
    };
    if let Reach::Ids(allowed) = &reach {
        let allowed: Vec<DocId> = allowed.iter().filter_map(|a| DocId::parse(a).ok()).collect();
        doc_ids = Some(match doc_ids {
            Some(ids) => ids.into_iter().filter(|i| allowed.contains(i)).collect(),
            None => allowed,
        });
    }
    // Refused rather than ignored: an answer in the wrong order would look like a valid one.
    if q.flag("descending")? {
        return Err(ApiError::bad_request(
            "descending=true is not supported on _changes: read the feed in order, from since",
        ));
    }
    let store = &inst.0.store;
    let since = match q.get("since") {
        None => 0,
        Some("now") => store.db_info(&doctype).await?.update_seq,
        Some(s) => parse_seq(s)?,
    };
    let limit = q.u64("limit")?.map(|l| l as usize);
    let include_docs = q.flag("include_docs")?;
    let query = ChangesQuery {
        since,
        limit,
        all_docs: match q.get("style") {
            None | Some("main_only") => false,
            Some("all_docs") => true,
            Some(_) => return Err(ApiError::bad_request("style must be main_only or all_docs")),
        },
        include_docs,
        doc_ids,
        max_bytes: include_docs.then_some(PAGE_BYTES),
    };
    let longpoll = match q.get("feed") {
        None | Some("normal") => false,
        Some("longpoll") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("feed={other} is not supported; use normal or longpoll")))
        }
    };
    let max_wait = state.map_or(60_000, |c| c.longpoll_max_ms);
    let timeout = Duration::from_millis(q.u64("timeout")?.unwrap_or(max_wait).min(max_wait));
    let mut feed = ChangesFeed { store: store.clone(), doctype, query, remaining: limit, end: None, written: 0 };
    // Subscribe before the first read so no commit between the read and the wait is missed.
    let mut commits = store.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut page = feed.read().await?;
    while longpoll && page.rows.is_empty() {
        match tokio::time::timeout_at(deadline, commits.changed()).await {
            Ok(Ok(())) => page = feed.read().await?,
            _ => break,
        }
    }
    let mut out = b"{\"results\":[".to_vec();
    let more = feed.write(page, &mut out).await?;
    Ok(stream::respond(out, more.then_some(feed), |mut feed: ChangesFeed| async move {
        let page = feed.read().await?;
        let mut out = Vec::new();
        let more = feed.write(page, &mut out).await?;
        Ok::<Step<ChangesFeed>, ApiError>((out, more.then_some(feed)))
    }))
}

/// A changes feed being answered, read a page at a time ([`PAGE_ROWS`] rows, or the rows whose
/// documents reach [`PAGE_BYTES`]). Each page is its own read, from the last sequence answered:
/// like CouchDB's feed, the answer is not one snapshot. It ends at the `update_seq` seen once
/// the first page shows more to come (so steady writes cannot keep it going), or at the limit;
/// a document changed while the feed is read can appear again at its new sequence, and nothing
/// is skipped (a change past the end is what `pending` counts and the next request reads).
struct ChangesFeed {
    store: Arc<dyn Store>,
    doctype: Doctype,
    /// The next page's query (its `since` moves on).
    query: ChangesQuery,
    /// Rows still allowed by the request's `limit`.
    remaining: Option<usize>,
    end: Option<u64>,
    written: usize,
}

impl ChangesFeed {
    async fn read(&mut self) -> ApiResult<Changes> {
        self.query.limit = Some(self.remaining.map_or(PAGE_ROWS, |r| r.min(PAGE_ROWS)));
        Ok(self.store.changes(&self.doctype, &self.query).await?)
    }

    /// Writes a page's rows, then the end of the answer after the last page; whether more
    /// pages follow.
    async fn write(&mut self, page: Changes, out: &mut Vec<u8>) -> ApiResult<bool> {
        for row in &page.rows {
            if self.written > 0 {
                out.push(b',');
            }
            self.written += 1;
            write_change(out, row, self.query.include_docs)?;
        }
        if let Some(r) = self.remaining.as_mut() {
            *r = r.saturating_sub(page.rows.len());
        }
        let mut more = !page.rows.is_empty() && page.pending > 0 && self.remaining != Some(0);
        if more {
            let end = match self.end {
                Some(end) => end,
                None => *self.end.insert(self.store.db_info(&self.doctype).await?.update_seq),
            };
            more = page.last_seq < end;
        }
        if more {
            self.query.since = page.last_seq;
            return Ok(true);
        }
        out.extend_from_slice(format!("],\"last_seq\":{},\"pending\":{}}}", page.last_seq, page.pending).as_bytes());
        Ok(false)
    }
}

/// One row of a changes feed: `{"seq", "id", "changes": [{"rev"}], "deleted"?, "doc"?}`, `doc`
/// being `null` for a document without a body to show.
fn write_change(out: &mut Vec<u8>, row: &ChangeRow, include_docs: bool) -> ApiResult<()> {
    out.extend_from_slice(format!("{{\"seq\":{},\"id\":", row.seq).as_bytes());
    put_json(out, row.id.as_str())?;
    out.extend_from_slice(b",\"changes\":[");
    for (i, rev) in row.changes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"rev\":");
        put_json(out, &rev.to_string())?;
        out.push(b'}');
    }
    out.push(b']');
    if row.deleted {
        out.extend_from_slice(b",\"deleted\":true");
    }
    if include_docs {
        out.extend_from_slice(b",\"doc\":");
        match &row.doc {
            Some(d) => render_into(out, d, d.id.as_str(), &[]).map_err(render_failed)?,
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
    Ok(())
}

fn key_param(q: &Query, body: &BTreeMap<String, &RawValue>, names: &[&str]) -> ApiResult<Option<String>> {
    for name in names {
        let v = match body.get(*name) {
            Some(raw) => Some(
                serde_json::from_str::<Value>(raw.get())
                    .map_err(|_| ApiError::bad_request(format!("{name} must be JSON")))?,
            ),
            None => q.json(name)?,
        };
        if let Some(v) = v {
            return match v {
                Value::String(s) => Ok(Some(s)),
                _ => Err(ApiError::bad_request(format!("{name} must be a JSON string (document ids are strings)"))),
            };
        }
    }
    Ok(None)
}

/// `GET|POST /data/:doctype/_all_docs` — documents by id, with `keys`, `startkey`/`endkey`
/// (JSON strings), `limit`, `skip`, `descending`, `inclusive_end`, `include_docs`. Written as
/// it is read (see `http::stream`), a page of ids at a time: each page is its own read, from the
/// last id answered, so (as with CouchDB's clusters) the answer is not one snapshot: a document
/// created or deleted while it is written may or may not be listed, every other one is listed
/// once. `total_rows` is the count when the first page was read; for a scope limited to some
/// ids, the number of ids it lists.
pub(super) async fn all_docs(inst: Inst, req: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let doctype = doctype_of(&req)?;
    let q = Query::of(&req)?;
    let (_, reach) = authorize(&inst, &req, &doctype, Verb::Get).await?;
    let bytes = if req.method() == actix_web::http::Method::POST {
        Some(read_body(&req, payload, max_body(&req)).await?)
    } else {
        None
    };
    let body = match &bytes {
        Some(b) => parse_raw_object(b, "the body")?,
        None => BTreeMap::new(),
    };
    let keys: Option<Vec<String>> = match body.get("keys") {
        Some(raw) => Some(serde_json::from_str(raw.get()).map_err(|_| keys_error(raw.get()))?),
        None => match q.get("keys") {
            Some(text) => Some(serde_json::from_str(text).map_err(|_| keys_error(text))?),
            None => None,
        },
    };
    let keys = keys
        .map(|list| list.iter().map(|k| DocId::parse(k).map_err(ApiError::BadRequest)).collect::<ApiResult<Vec<_>>>())
        .transpose()?;
    let keys = match (&reach, keys) {
        (Reach::All, keys) => keys,
        (Reach::Ids(_), Some(keys)) => {
            check_ids(&reach, keys.iter())?;
            Some(keys)
        }
        (Reach::Ids(allowed), None) => Some(allowed.iter().filter_map(|a| DocId::parse(a).ok()).collect()),
        (Reach::None, _) => return Err(ApiError::Forbidden("no access".into())),
    };
    let key = key_param(&q, &body, &["key"])?;
    let limit = q.u64("limit")?.map(|l| l as usize);
    let skip = q.u64("skip")?.unwrap_or(0) as usize;
    let include_docs = q.flag("include_docs")? || body.get("include_docs").is_some_and(|v| v.get() == "true");
    let query = AllDocsQuery {
        start_key: key.clone().or(key_param(&q, &body, &["startkey", "start_key"])?),
        end_key: key.or(key_param(&q, &body, &["endkey", "end_key"])?),
        keys: None,
        inclusive_end: q.bool("inclusive_end")?.unwrap_or(true),
        descending: q.flag("descending")?,
        limit: None,
        skip,
        include_docs,
        exclusive_start: false,
        max_bytes: include_docs.then_some(PAGE_BYTES),
    };
    drop(body);
    drop(bytes);
    // With keys, the request's `skip` and `limit` pick the keys; pages then take them in order.
    let keys = keys.map(|k| k.into_iter().skip(skip).take(limit.unwrap_or(usize::MAX)).collect());
    let mut feed = AllDocsFeed { store: inst.0.store.clone(), doctype, query, keys, remaining: limit, written: 0 };
    let page = feed.read().await?;
    // A scope limited to some ids is told how many it lists, never the doctype's count (which
    // would tell how many documents it cannot see).
    let total_rows = match &reach {
        Reach::Ids(allowed) => allowed.len() as u64,
        _ => page.total_rows,
    };
    let mut out = Vec::new();
    out.extend_from_slice(format!("{{\"total_rows\":{total_rows},\"offset\":{skip},\"rows\":[").as_bytes());
    let more = feed.write(page, &mut out)?;
    Ok(stream::respond(out, more.then_some(feed), |mut feed: AllDocsFeed| async move {
        let page = feed.read().await?;
        let mut out = Vec::new();
        let more = feed.write(page, &mut out)?;
        Ok::<Step<AllDocsFeed>, ApiError>((out, more.then_some(feed)))
    }))
}

fn keys_error(text: &str) -> ApiError {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(_)) => ApiError::bad_request("keys must be strings"),
        Ok(_) => ApiError::bad_request("keys must be an array"),
        Err(_) => ApiError::bad_request("keys must be JSON"),
    }
}

/// An `_all_docs` being answered: by range, each page starting after the last id answered; by
/// keys, each page taking the next keys.
struct AllDocsFeed {
    store: Arc<dyn Store>,
    doctype: Doctype,
    /// The next page's query.
    query: AllDocsQuery,
    /// The keys not yet answered, in order.
    keys: Option<std::collections::VecDeque<DocId>>,
    /// Rows still allowed by the request's `limit` (by range).
    remaining: Option<usize>,
    written: usize,
}

impl AllDocsFeed {
    async fn read(&mut self) -> ApiResult<AllDocs> {
        match &self.keys {
            Some(keys) => {
                self.query.keys = Some(keys.iter().take(PAGE_ROWS).cloned().collect());
                self.query.skip = 0;
            }
            None => self.query.limit = Some(self.remaining.map_or(PAGE_ROWS, |r| r.min(PAGE_ROWS))),
        }
        Ok(self.store.all_docs(&self.doctype, &self.query).await?)
    }

    /// Writes a page's rows, then the end of the answer after the last page; whether more
    /// pages follow.
    fn write(&mut self, page: AllDocs, out: &mut Vec<u8>) -> ApiResult<bool> {
        let answered = page.rows.len();
        let last = match page.rows.last() {
            Some(AllDocsRow::Doc { id, .. }) => Some(id.as_str().to_owned()),
            _ => None,
        };
        for row in &page.rows {
            if self.written > 0 {
                out.push(b',');
            }
            self.written += 1;
            write_all_docs_row(out, row, self.query.include_docs)?;
        }
        let more = match &mut self.keys {
            Some(keys) => {
                keys.drain(..answered.min(keys.len()));
                answered > 0 && !keys.is_empty()
            }
            None => {
                if let Some(r) = self.remaining.as_mut() {
                    *r = r.saturating_sub(answered);
                }
                match last {
                    // A page that answered nothing cannot move on.
                    Some(last) if page.more && self.remaining != Some(0) => {
                        self.query.start_key = Some(last);
                        self.query.exclusive_start = true;
                        self.query.skip = 0;
                        true
                    }
                    _ => false,
                }
            }
        };
        if !more {
            out.extend_from_slice(b"]}");
        }
        Ok(more)
    }
}

/// One row of `_all_docs`: `{"id", "key", "value": {"rev", "deleted"?}, "doc"?}`, or
/// `{"key", "error": "not_found"}` for a key without a document.
fn write_all_docs_row(out: &mut Vec<u8>, row: &AllDocsRow, include_docs: bool) -> ApiResult<()> {
    match row {
        AllDocsRow::Doc { id, rev, deleted, doc } => {
            out.extend_from_slice(b"{\"id\":");
            put_json(out, id.as_str())?;
            out.extend_from_slice(b",\"key\":");
            put_json(out, id.as_str())?;
            out.extend_from_slice(b",\"value\":{\"rev\":");
            put_json(out, &rev.to_string())?;
            if *deleted {
                out.extend_from_slice(b",\"deleted\":true");
            }
            out.push(b'}');
            if include_docs {
                out.extend_from_slice(b",\"doc\":");
                match doc {
                    Some(d) => render_into(out, d, d.id.as_str(), &[]).map_err(render_failed)?,
                    None => out.extend_from_slice(b"null"),
                }
            }
            out.push(b'}');
        }
        AllDocsRow::NotFound { key } => {
            out.extend_from_slice(b"{\"key\":");
            put_json(out, key.as_str())?;
            out.extend_from_slice(b",\"error\":\"not_found\"}");
        }
    }
    Ok(())
}
