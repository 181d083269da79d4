//! The files content channel's question, `POST /sharings/:id/io.cozy.files/_content_diff`:
//! which of these file versions do you lack? Asked by the sender of a sharing of files
//! (`sync::content`), answered by the member (`http::content`). Ids are in the receiver's id
//! space on the way there, in the sender's on the way back (the owner transforms them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::object;

/// Files one `_content_diff` may ask about; a receiver answers 413 beyond. A sender asks
/// about half as many per request (`sync::content`).
pub const MAX_DIFF: usize = 1000;

/// One file's version on offer: `{"vfs_id": "<version>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentOffer {
    pub vfs_id: String,
}

/// The question: `{"<file id>": {"vfs_id": "<version>"}, ...}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ContentDiffRequest(pub BTreeMap<String, ContentOffer>);

impl ContentDiffRequest {
    /// Reads a question: every file id with its offer, `None` for an offer that is not an
    /// object with a string `vfs_id` (the caller refuses it, after checking how many files are
    /// asked). Errs when the body is not an object.
    pub fn parse(body: Value) -> Result<Vec<(String, Option<ContentOffer>)>, String> {
        let Value::Object(asked) = body else {
            return Err("the body must be an object of file ids".into());
        };
        Ok(asked.into_iter().map(|(id, v)| (id, object(v))).collect())
    }
}

/// The answer: `{"<file id>": "missing" | "present" | "stale" | "in_progress"}` (see
/// `files::received::ContentNeed`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ContentDiffAnswer(pub BTreeMap<String, String>);

impl ContentDiffAnswer {
    /// Reads an answer, leniently within an object: a value that is not a string is skipped.
    pub fn parse(answer: Value) -> Result<ContentDiffAnswer, String> {
        let Value::Object(obj) = answer else {
            return Err("the member's content diff is not an object".into());
        };
        Ok(ContentDiffAnswer(
            obj.into_iter()
                .filter_map(|(k, v)| match v {
                    Value::String(s) => Some((k, s)),
                    _ => None,
                })
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_diff_questions_and_answers_round_trip() {
        let wire = r#"{"a":{"vfs_id":"v1"},"b":{"vfs_id":"v2"}}"#;
        let asked = ContentDiffRequest::parse(serde_json::from_str(wire).unwrap()).unwrap();
        let offers: BTreeMap<String, ContentOffer> = asked.into_iter().map(|(k, o)| (k, o.unwrap())).collect();
        assert_eq!(serde_json::to_string(&ContentDiffRequest(offers)).unwrap(), wire);
        let odd = r#"{"a":["v1"],"b":{"vfs_id":3},"c":"v"}"#;
        let asked = ContentDiffRequest::parse(serde_json::from_str(odd).unwrap()).unwrap();
        assert!(asked.iter().all(|(_, o)| o.is_none()), "{asked:?}");
        assert!(ContentDiffRequest::parse(serde_json::json!([])).is_err());

        let answer = r#"{"a":"missing","b":"present","c":"stale","d":"in_progress"}"#;
        let read = ContentDiffAnswer::parse(serde_json::from_str(answer).unwrap()).unwrap();
        assert_eq!(serde_json::to_string(&read).unwrap(), answer);
        let read = ContentDiffAnswer::parse(serde_json::json!({"a": "missing", "b": 1})).unwrap();
        assert_eq!(read.0.keys().collect::<Vec<_>>(), ["a"]);
        assert!(ContentDiffAnswer::parse(serde_json::json!("x")).is_err());
    }
}
