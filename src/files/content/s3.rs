//! The S3-compatible backend, through `object_store` (see the module above for its layout).

use super::*;

/// Size of each part of a multipart upload (S3 requires at least 5 MiB but for the last), and
/// the largest object sent with a single `PUT`.
pub const S3_PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts uploading at once, per object being written.
pub const S3_PARTS_IN_FLIGHT: usize = 2;

/// How to reach an S3-compatible server.
#[derive(Clone, Debug)]
pub struct S3Settings {
    /// `http(s)://host:port` of an S3-compatible server; `None` for AWS itself.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: secrecy::SecretString,
    /// First segment of every object name, so several deployments can share a bucket.
    pub prefix: String,
    /// Allow a plain `http://` endpoint (tests, local servers).
    pub allow_http: bool,
}

impl S3Settings {
    /// The settings of the S3 backend from the `[files.s3]` configuration; an error naming what
    /// is missing.
    pub fn from_config(s3: &crate::config::S3Config) -> anyhow::Result<S3Settings> {
        let missing = |k: &str| anyhow::anyhow!("files.backend = \"s3\" needs files.s3.{k}");
        Ok(S3Settings {
            endpoint: s3.endpoint.clone(),
            bucket: s3.bucket.clone().ok_or_else(|| missing("bucket"))?,
            region: s3.region.clone(),
            access_key_id: s3.access_key_id.clone().ok_or_else(|| missing("access_key_id"))?,
            secret_access_key: s3.secret_access_key.clone().ok_or_else(|| missing("secret_access_key"))?,
            prefix: s3.prefix.clone(),
            allow_http: s3.allow_http,
        })
    }
}

/// The S3 backend: one client, each instance under its own prefix.
pub struct S3Backend {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl S3Backend {
    pub fn new(s: &S3Settings) -> anyhow::Result<S3Backend> {
        use secrecy::ExposeSecret;
        let mut b = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&s.bucket)
            .with_region(&s.region)
            .with_access_key_id(&s.access_key_id)
            .with_secret_access_key(s.secret_access_key.expose_secret())
            .with_allow_http(s.allow_http)
            // No whole-request timeout: a download streams at its reader's pace. Connecting is
            // bounded, and a failed call is retried a few times, within 30 s.
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_allow_http(s.allow_http)
                    .with_timeout_disabled()
                    .with_connect_timeout(std::time::Duration::from_secs(5)),
            )
            .with_retry(object_store::RetryConfig {
                max_retries: 3,
                retry_timeout: std::time::Duration::from_secs(30),
                ..Default::default()
            });
        if let Some(endpoint) = &s.endpoint {
            // Path-style addressing (`endpoint/bucket/key`): what S3-compatible servers serve.
            b = b.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
        }
        let store = b.build().map_err(|e| anyhow::anyhow!("invalid S3 configuration: {e}"))?;
        let prefix = s.prefix.trim_matches('/').to_owned();
        ContentKey::parse(&prefix).map_err(|_| anyhow::anyhow!("files.s3.prefix must be a simple name"))?;
        Ok(S3Backend { store: Arc::new(store), prefix })
    }
}

impl ContentBackend for S3Backend {
    fn open(&self, instance: &str) -> anyhow::Result<Arc<dyn ContentStore>> {
        ContentKey::parse(instance).map_err(anyhow::Error::msg)?;
        Ok(Arc::new(S3Content { store: self.store.clone(), base: format!("{}/{instance}", self.prefix) }))
    }

    fn destroy(&self, instance: &str) -> futures_util::future::BoxFuture<'static, anyhow::Result<()>> {
        let store = self.store.clone();
        let base = object_store::path::Path::from(format!("{}/{instance}", self.prefix));
        Box::pin(async move {
            let locations = store.list(Some(&base)).map_ok(|m| m.location).boxed();
            store.delete_stream(locations).try_collect::<Vec<_>>().await?;
            Ok(())
        })
    }
}

/// One instance's content in an S3 bucket.
pub struct S3Content {
    store: Arc<dyn ObjectStore>,
    base: String,
}

impl S3Content {
    /// `HEAD` requests [`ContentStore::sizes`] keeps in flight at once.
    const HEADS_AT_ONCE: usize = 16;

    fn location(&self, key: &ContentKey) -> object_store::path::Path {
        object_store::path::Path::from(format!("{}/{}", self.base, key.as_str()))
    }
}

enum S3Upload {
    /// Below one part: kept until commit, then sent with one `PUT`.
    Small(Vec<Bytes>, usize),
    Multipart(WriteMultipart),
    Done,
}

pub(super) struct S3Writer {
    store: Arc<dyn ObjectStore>,
    location: object_store::path::Path,
    upload: S3Upload,
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        if let S3Upload::Multipart(w) = std::mem::replace(&mut self.upload, S3Upload::Done) {
            // A cut connection: the parts sent so far are discarded by the server.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = w.abort().await;
                });
            }
        }
    }
}

#[async_trait]
impl ContentWriter for S3Writer {
    async fn write(&mut self, chunk: Bytes) -> Result<(), ContentError> {
        match &mut self.upload {
            S3Upload::Small(chunks, len) if *len + chunk.len() <= S3_PART_BYTES => {
                *len += chunk.len();
                chunks.push(chunk);
                Ok(())
            }
            S3Upload::Small(chunks, _) => {
                let upload = self
                    .store
                    .put_multipart(&self.location)
                    .await
                    .map_err(|e| ContentError::object(e, "failed to start an S3 upload"))?;
                let mut w = WriteMultipart::new_with_chunk_size(upload, S3_PART_BYTES);
                for c in std::mem::take(chunks) {
                    w.write(&c);
                }
                w.write(&chunk);
                self.upload = S3Upload::Multipart(w);
                Ok(())
            }
            S3Upload::Multipart(w) => {
                w.wait_for_capacity(S3_PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| ContentError::object(e, "failed to upload a part to S3"))?;
                w.write(&chunk);
                Ok(())
            }
            S3Upload::Done => Err(ContentError::Unavailable(anyhow::anyhow!("writer closed"))),
        }
    }

    async fn commit(mut self: Box<Self>) -> Result<(), ContentError> {
        match std::mem::replace(&mut self.upload, S3Upload::Done) {
            S3Upload::Small(chunks, _) => {
                let payload: PutPayload = chunks.into_iter().collect();
                self.store
                    .put(&self.location, payload)
                    .await
                    .map_err(|e| ContentError::object(e, "failed to write to S3"))?;
                Ok(())
            }
            S3Upload::Multipart(w) => {
                w.finish().await.map_err(|e| ContentError::object(e, "failed to complete an S3 upload"))?;
                Ok(())
            }
            S3Upload::Done => Err(ContentError::Unavailable(anyhow::anyhow!("writer closed"))),
        }
    }

    async fn abort(mut self: Box<Self>) {
        if let S3Upload::Multipart(w) = std::mem::replace(&mut self.upload, S3Upload::Done) {
            let _ = w.abort().await;
        }
    }
}

#[async_trait]
impl ContentStore for S3Content {
    async fn create(&self, key: &ContentKey) -> Result<Box<dyn ContentWriter>, ContentError> {
        Ok(Box::new(S3Writer {
            store: self.store.clone(),
            location: self.location(key),
            upload: S3Upload::Small(Vec::new(), 0),
        }))
    }

    async fn read(&self, key: &ContentKey, range: Option<Range<u64>>) -> Result<ContentStream, ContentError> {
        let location = self.location(key);
        let range = match range {
            None => None,
            Some(r) => {
                let size = self.size(key).await?.ok_or(ContentError::NotFound)?;
                let r = clamp(Some(r), size)?;
                if r.is_empty() {
                    return Ok(futures_util::stream::empty().boxed());
                }
                Some(object_store::GetRange::Bounded(r))
            }
        };
        let opts = object_store::GetOptions { range, ..Default::default() };
        let got = self
            .store
            .get_opts(&location, opts)
            .await
            .map_err(|e| ContentError::object(e, "failed to read from S3"))?;
        Ok(got.into_stream().map_err(|e| ContentError::object(e, "failed to read from S3")).boxed())
    }

    async fn size(&self, key: &ContentKey) -> Result<Option<u64>, ContentError> {
        match self.store.head(&self.location(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(ContentError::object(e, "failed to read S3 metadata")),
        }
    }

    /// Up to [`S3Content::HEADS_AT_ONCE`] `HEAD` requests in flight, answers in the order of
    /// `keys`: one at a time, a status request counting a thousand files waited for a
    /// thousand round trips.
    async fn sizes(&self, keys: &[ContentKey]) -> Result<Vec<Option<u64>>, ContentError> {
        use futures_util::{StreamExt, TryStreamExt};
        // Made at once (each does nothing until polled): a closure mapping keys to them, in
        // the stream, is not general enough for `async_trait`'s boxed future.
        let heads: Vec<_> = keys.iter().map(|key| self.size(key)).collect();
        futures_util::stream::iter(heads).buffered(Self::HEADS_AT_ONCE).try_collect().await
    }

    async fn delete(&self, key: &ContentKey) -> Result<(), ContentError> {
        match self.store.delete(&self.location(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(ContentError::object(e, "failed to delete from S3")),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ContentError> {
        let base = object_store::path::Path::from(self.base.as_str());
        let strip = format!("{}/", self.base);
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|e| ContentError::object(e, "failed to list S3 objects"))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let key = ContentKey::parse(m.location.as_ref().strip_prefix(&strip)?).ok()?;
                key.as_str().starts_with(prefix).then(|| ObjectInfo {
                    key,
                    size: m.size,
                    modified: SystemTime::from(m.last_modified),
                })
            })
            .collect())
    }

    async fn sweep_incomplete(&self, _older_than: SystemTime) -> Result<u64, ContentError> {
        // Uploads cut by a crash are multipart uploads never completed: invisible, and not
        // listable through `object_store`; a bucket lifecycle rule
        // (`AbortIncompleteMultipartUpload`) reclaims their parts.
        Ok(0)
    }
}
