//! Test data for files: path-segment encoding, deterministic bytes, Cozy's base64 MD5.

use base64::Engine;
use md5::Digest;

/// A path or query segment, every non-alphanumeric byte percent-encoded.
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Deterministic bytes that differ from seed to seed (`hearth::files::sample::pattern`).
pub fn bytes_of(seed: u64, len: usize) -> Vec<u8> {
    hearth::files::sample::pattern(len, seed)
}

/// The base64 MD5 of `data`, as `Content-MD5` and `md5sum` carry it.
pub fn md5_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data))
}

/// Uploads `data` as file `name` into directory `dir` (`POST /files/:dir`, with its MD5):
/// asserts 201 and answers the new file's id.
pub async fn upload(i: &super::TestInstance, token: &str, dir: &str, name: &str, data: &[u8]) -> String {
    let resp = i
        .req(reqwest::Method::POST, &format!("/files/{}?Type=file&Name={}", enc(dir), enc(name)), Some(token))
        .header("Content-MD5", md5_b64(data))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "{v}");
    v["data"]["id"].as_str().unwrap().to_owned()
}

/// `GET /files/download?Path=`: the status, and whether the body is `data`.
pub async fn download(i: &super::TestInstance, token: &str, path: &str, data: &[u8]) -> (u16, bool) {
    let resp =
        i.req(reqwest::Method::GET, &format!("/files/download?Path={}", enc(path)), Some(token)).send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap();
    (status, body.as_ref() == data)
}

/// Makes directory `name` in directory `dir` (`POST /files/:dir?Type=directory`): asserts 201
/// and answers its id.
pub async fn mkdir(i: &super::TestInstance, token: &str, dir: &str, name: &str) -> String {
    let (s, v) = i
        .call(
            reqwest::Method::POST,
            &format!("/files/{}?Type=directory&Name={}", enc(dir), enc(name)),
            Some(token),
            None,
        )
        .await;
    assert_eq!(s, 201, "mkdir: {v}");
    v["data"]["id"].as_str().unwrap().to_owned()
}

/// Gives file `id` new content `data` (`PUT /files/:id`, with its MD5): asserts 200.
pub async fn replace(i: &super::TestInstance, token: &str, id: &str, data: &[u8]) {
    let resp = i
        .req(reqwest::Method::PUT, &format!("/files/{}", enc(id)), Some(token))
        .header("Content-MD5", md5_b64(data))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_eq!(status, 200, "replace: {:?}", resp.text().await);
}
