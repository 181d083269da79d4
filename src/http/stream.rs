//! Answers written as they are read (`_changes`, `_all_docs`, `_bulk_get`): the store is read a
//! page at a time, and each page goes out as one chunk of a chunked response, so an answer
//! holds about one page in memory however long it is, and no store read (no SQLite read
//! transaction) stays open from one page to the next: writers and other readers go on while a
//! long answer is sent, and a slow client holds nothing but its socket.
//!
//! The first page is read before the answer starts, so a failure there is an ordinary JSON
//! error with its status; an answer that fits in one page is sent whole, with its length. A
//! failure after the first byte can only cut the answer: the chunked body ends without its last
//! chunk, which HTTP clients report as an error, never as a complete answer (as CouchDB's
//! chunked responses do).

use std::future::Future;

use actix_web::http::header::ContentType;
use actix_web::web::Bytes;
use actix_web::HttpResponse;
use futures_util::stream;

use super::{ApiError, ApiResult};

/// Rows read from the store per page.
pub const PAGE_ROWS: usize = 500;
/// Bodies read per page (`max_bytes` of the store's queries); a page stops at the row that
/// reaches it.
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;

/// What one step wrote, and the state of the next (`None` once the answer is complete).
pub type Step<S> = (Vec<u8>, Option<S>);

/// A 200 JSON answer: `first` (already read), then what each call of `next` writes, until it
/// returns no next state. Without a next state at all, the answer is sent whole.
pub fn respond<S, F, Fut>(first: Vec<u8>, state: Option<S>, next: F) -> HttpResponse
where
    S: 'static,
    F: FnMut(S) -> Fut + 'static,
    Fut: Future<Output = ApiResult<Step<S>>> + 'static,
{
    let Some(state) = state else {
        return HttpResponse::Ok().insert_header(ContentType::json()).body(first);
    };
    let chunks = stream::unfold((Some(first), Some(state), next), |(first, state, mut next)| async move {
        if let Some(bytes) = first {
            return Some((Ok(Bytes::from(bytes)), (None, state, next)));
        }
        let mut state = state?;
        loop {
            match next(state).await {
                // An empty chunk would end a chunked body: only chunks with bytes are sent.
                Ok((bytes, Some(after))) if bytes.is_empty() => state = after,
                Ok((bytes, _)) if bytes.is_empty() => return None,
                Ok((bytes, after)) => return Some((Ok(Bytes::from(bytes)), (None, after, next))),
                Err(e) => {
                    match &e {
                        ApiError::Internal(cause) | ApiError::Unavailable(cause) => {
                            tracing::error!(error = ?cause, "answer cut: a read failed after it had started")
                        }
                        other => tracing::warn!(error = %other, "answer cut: a read failed after it had started"),
                    }
                    return Some((Err::<Bytes, ApiError>(e), (None, None, next)));
                }
            }
        }
    });
    HttpResponse::Ok().insert_header(ContentType::json()).streaming(chunks)
}

/// Appends `value` as JSON (strings, numbers: what cannot fail to serialise).
pub fn put_json(out: &mut Vec<u8>, value: &(impl serde::Serialize + ?Sized)) -> ApiResult<()> {
    serde_json::to_writer(out, value).map_err(|e| ApiError::Internal(anyhow::Error::new(e)))
}
