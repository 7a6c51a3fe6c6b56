//! Azure Blob Storage (and Azurite), through Microsoft's official `azure_storage_blob` crate.
//!
//! Two ways in:
//! - a connection string with an account key (Azurite's development string works): the SDK
//!   authenticates only with Entra ID tokens or SAS, so an account SAS is signed here from the
//!   key (HMAC-SHA256) and renewed before it expires;
//! - a blob service URL (`https://<account>.blob.core.windows.net`) with the managed identity
//!   of the Azure host (`AZURE_CLIENT_ID` picks a user-assigned one): no key anywhere.
//!
//! The SDK is async; [`BlobStore`] is blocking. Calls run on a small runtime of their own and
//! the caller waits on a channel, so the store can be used from any blocking thread.

use std::io::Read;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use azure_core::http::{RequestContent, StatusCode, Url};
use azure_storage_blob::BlobContainerClient;
use azure_storage_blob::models::{BlobContainerClientListBlobsOptions, BlockLookupList};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{BlobStore, LIST_PAGE, Listed, StoreError, check_container, check_key, check_prefix};

/// Azurite's well-known development account.
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// SAS version signed here: one that every service and Azurite release accepts.
const SAS_VERSION: &str = "2021-08-06";
/// A SAS lives this long and is renewed when less than a quarter of it is left.
const SAS_LIFETIME: Duration = Duration::from_secs(4 * 3600);

/// How the store authenticates.
#[derive(Clone)]
enum Auth {
    Key {
        account: String,
        key: Vec<u8>,
    },
    ManagedIdentity {
        /// The user-assigned identity's client id; `None` for the system-assigned identity.
        client_id: Option<String>,
        credential: Arc<dyn azure_core::credentials::TokenCredential>,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Key { account, .. } => write!(f, "account key of {account}"),
            Auth::ManagedIdentity {
                client_id: Some(id),
                ..
            } => write!(f, "user-assigned managed identity {id}"),
            Auth::ManagedIdentity {
                client_id: None, ..
            } => f.write_str("system-assigned managed identity"),
        }
    }
}

/// The managed identity to ask tokens for: the user-assigned one with this client id (what the
/// deployment gives the apps, and names in `AZURE_CLIENT_ID`), else the host's system-assigned
/// one.
fn managed_identity(client_id: Option<&str>) -> Option<String> {
    client_id
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
}

/// A container in Azure Blob Storage (or Azurite), reached with a connection string's account
/// key or a managed identity; its blocking API runs the SDK on a runtime of its own.
pub struct AzureStore {
    /// `https://account.blob.core.windows.net/container`, without any SAS.
    container_url: Url,
    /// The container's name.
    container: String,
    auth: Auth,
    /// The client and when its SAS expires (`None` for token auth).
    client: Mutex<(Arc<BlobContainerClient>, Option<SystemTime>)>,
}

impl std::fmt::Debug for AzureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureStore")
            .field("container_url", &self.container_url)
            .field("auth", &self.auth)
            .finish()
    }
}

/// The runtime the SDK's futures run on; never dropped, shared by every store.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("azure-blob")
            .enable_all()
            .build()
            .expect("the Azure runtime starts")
    })
}

/// reqwest is built without a TLS provider (see the workspace manifest): install ring, once,
/// before the first HTTP client is built.
fn install_tls_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // An error means another provider is installed already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Runs `future` on the Azure runtime and waits for it from this (blocking) thread.
fn block_on<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv().expect("the Azure runtime never drops a task")
}

/// Whether `store` (the `--store` value) names Azure rather than a directory.
pub fn is_azure(store: &str) -> bool {
    store.contains("AccountName=")
        || store.contains("UseDevelopmentStorage=true")
        || store.starts_with("https://")
        || store.starts_with("http://")
}

impl AzureStore {
    /// Opens `container` at the account `spec` names (a connection string or a service URL);
    /// with `create`, makes the container if it does not exist.
    pub fn open(
        spec: &str,
        container: &str,
        create: bool,
        client_id: Option<&str>,
    ) -> Result<Self, StoreError> {
        check_container(container).map_err(config_error)?;
        let (service, auth) = parse_spec(spec, client_id)?;
        tracing::debug!(%service, ?auth, "opening Azure Blob Storage");
        let mut container_url = service.clone();
        container_url
            .path_segments_mut()
            .map_err(|()| config_error(format!("{service} is not a blob service URL")))?
            .pop_if_empty()
            .push(container);
        let client = make_client(&container_url, &auth)?;
        let store = Self {
            container_url,
            container: container.to_owned(),
            auth,
            client: Mutex::new(client),
        };
        let client = store.client()?;
        let location = service.to_string();
        let name = container.to_owned();
        let exists = block_on(async move { client.exists().await });
        match exists {
            Ok(true) => {}
            Ok(false) if create => {
                let client = store.client()?;
                block_on(async move { client.create(None).await })
                    .map_err(|e| store.error("creating", "the container", e))?;
            }
            Ok(false) => {
                return Err(StoreError::NoContainer {
                    container: name,
                    location,
                });
            }
            Err(e) => return Err(store.error("opening", "the container", e)),
        }
        Ok(store)
    }

    /// The client, with a fresh SAS if the old one is about to expire.
    fn client(&self) -> Result<Arc<BlobContainerClient>, StoreError> {
        let mut guard = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(expiry) = guard.1
            && expiry.duration_since(SystemTime::now()).unwrap_or_default() < SAS_LIFETIME / 4
        {
            *guard = make_client(&self.container_url, &self.auth)?;
        }
        Ok(guard.0.clone())
    }

    fn error(&self, operation: &'static str, key: &str, e: azure_core::Error) -> StoreError {
        let store = self.describe();
        match e.http_status() {
            Some(StatusCode::NotFound) if e.to_string().contains("ContainerNotFound") => {
                StoreError::NoContainer {
                    container: self
                        .container_url
                        .path()
                        .rsplit('/')
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                    location: store,
                }
            }
            Some(StatusCode::NotFound) => StoreError::NotFound {
                store,
                key: key.into(),
            },
            Some(StatusCode::Forbidden) | Some(StatusCode::Unauthorized) => StoreError::Denied {
                store,
                key: key.into(),
                hint: "; check the account key, or the identity's Storage Blob Data role",
                source: e.into(),
            },
            _ => StoreError::Io {
                store,
                operation,
                key: key.into(),
                source: e.into(),
            },
        }
    }
}

fn config_error(reason: String) -> StoreError {
    StoreError::config(format!("Azure storage configuration: {reason}"))
}

/// A configuration error for `reason`, caused by `source`.
fn config_error_from(
    reason: String,
    source: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    StoreError::Config {
        message: format!("Azure storage configuration: {reason}"),
        source: Some(source.into()),
    }
}

/// The service URL and how to authenticate: a blob service URL means a managed identity
/// (`client_id` picks a user-assigned one), a connection string its account key.
fn parse_spec(spec: &str, client_id: Option<&str>) -> Result<(Url, Auth), StoreError> {
    if spec.starts_with("https://") || spec.starts_with("http://") {
        let url =
            Url::parse(spec).map_err(|e| config_error_from(format!("{spec} is not a URL"), e))?;
        let client_id = managed_identity(client_id);
        // The credential builds its HTTP client now, and rustls needs its provider first.
        install_tls_provider();
        let credential = azure_identity::ManagedIdentityCredential::new(Some(
            azure_identity::ManagedIdentityCredentialOptions {
                user_assigned_id: client_id
                    .clone()
                    .map(azure_identity::UserAssignedId::ClientId),
                ..Default::default()
            },
        ))
        .map_err(|e| config_error_from("managed identity unavailable".into(), e))?;
        return Ok((
            url,
            Auth::ManagedIdentity {
                client_id,
                credential,
            },
        ));
    }
    let fields: Vec<(String, String)> = spec
        .split(';')
        .filter_map(|part| part.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    if get("UseDevelopmentStorage").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        let url = Url::parse("http://127.0.0.1:10000/devstoreaccount1").expect("valid URL");
        return Ok((
            url,
            Auth::Key {
                account: DEV_ACCOUNT.into(),
                key: BASE64.decode(DEV_KEY).expect("valid key"),
            },
        ));
    }
    let account = get("AccountName")
        .ok_or_else(|| config_error("the connection string has no AccountName".into()))?;
    let key = get("AccountKey").ok_or_else(|| {
        config_error("the connection string has no AccountKey (for managed identity, pass the blob service URL instead)".into())
    })?;
    let key = BASE64.decode(&key).map_err(|_| {
        config_error("the AccountKey in the connection string is not base64".into())
    })?;
    let endpoint = match get("BlobEndpoint") {
        Some(endpoint) => endpoint,
        None => {
            let protocol = get("DefaultEndpointsProtocol").unwrap_or_else(|| "https".into());
            let suffix = get("EndpointSuffix").unwrap_or_else(|| "core.windows.net".into());
            format!("{protocol}://{account}.blob.{suffix}")
        }
    };
    let url = Url::parse(&endpoint)
        .map_err(|e| config_error_from(format!("BlobEndpoint {endpoint} is not a URL"), e))?;
    Ok((url, Auth::Key { account, key }))
}

fn make_client(
    container_url: &Url,
    auth: &Auth,
) -> Result<(Arc<BlobContainerClient>, Option<SystemTime>), StoreError> {
    install_tls_provider();
    let fail = |e: azure_core::Error| {
        config_error_from(format!("cannot create a client for {container_url}"), e)
    };
    match auth {
        Auth::Key { account, key } => {
            let expiry = SystemTime::now() + SAS_LIFETIME;
            let mut url = container_url.clone();
            url.set_query(Some(&account_sas(account, key, expiry)));
            Ok((
                Arc::new(BlobContainerClient::new(url, None, None).map_err(fail)?),
                Some(expiry),
            ))
        }
        Auth::ManagedIdentity { credential, .. } => Ok((
            Arc::new(
                BlobContainerClient::new(container_url.clone(), Some(credential.clone()), None)
                    .map_err(fail)?,
            ),
            None,
        )),
    }
}

/// An account SAS for the blob service: read, write, delete, list, add, create on the
/// service, containers and objects, until `expiry`.
fn account_sas(account: &str, key: &[u8], expiry: SystemTime) -> String {
    let expiry = iso8601(expiry);
    let (permissions, services, resource_types, protocols) = ("rwdlac", "b", "sco", "https,http");
    // Field order of the account SAS string-to-sign (versions 2020-12-06 and later).
    let to_sign = format!(
        "{account}\n{permissions}\n{services}\n{resource_types}\n\n{expiry}\n\n{protocols}\n{SAS_VERSION}\n\n"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(to_sign.as_bytes());
    let signature = BASE64.encode(mac.finalize().into_bytes());
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "sv={SAS_VERSION}&ss={services}&srt={resource_types}&sp={permissions}&se={}&spr={}&sig={}",
        encode(&expiry),
        encode(protocols),
        encode(&signature)
    )
}

/// `YYYY-MM-DDThh:mm:ssZ`: whole seconds, as a SAS token's expiry is written.
/// A block's id: Azure wants the ids of one blob's blocks all of one length (the SDK encodes
/// them in base64).
fn block_id(block: u32) -> Vec<u8> {
    format!("{block:010}").into_bytes()
}

fn iso8601(t: SystemTime) -> String {
    use azure_core::time::{OffsetDateTime, to_rfc3339};
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let time = i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    to_rfc3339(&time)
}

/// A download in progress, read as chunks arrive. Read from a blocking thread, as every call
/// of the store is.
struct ChunkReader {
    chunks: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0), // the sender is done: end of blob
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

impl BlobStore for AzureStore {
    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, StoreError> {
        check_key(key)?;
        let blob = self.client()?.blob_client(key);
        let response = block_on(async move { blob.download(None).await })
            .map_err(|e| self.error("reading", key, e))?;
        // Waiting for a slow reader suspends the download, never the runtime's thread: readers
        // left open while others run (an incremental job reads earlier jobs' files in step
        // with its own listing) must not stall every other call of the store.
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        runtime().spawn(async move {
            let mut body = response.body;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(std::io::Error::other);
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Box::new(ChunkReader {
            chunks: rx,
            current: bytes::Bytes::new(),
        }))
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        check_key(key)?;
        let blob = self.client()?.blob_client(key);
        let content = RequestContent::from(bytes.to_vec());
        // The SDK uploads large content as staged blocks and commits them at once.
        block_on(async move { blob.upload(content, None).await })
            .map(drop)
            .map_err(|e| self.error("writing", key, e))
    }

    fn put_file(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        let bytes = std::fs::read(path).map_err(|e| StoreError::LocalFile {
            path: path.to_owned(),
            source: e,
        })?;
        self.put(key, &bytes)
    }

    fn exists(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        let blob = self.client()?.blob_client(key);
        block_on(async move { blob.exists().await }).map_err(|e| self.error("looking for", key, e))
    }

    fn list_pages(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(Vec<Listed>) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(), StoreError> {
        check_prefix(prefix)?;
        let client = self.client()?;
        let prefix_owned = prefix.to_owned();
        // The SDK lists on its runtime; pages come here as they arrive, one waiting at most.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Listed>, azure_core::Error>>(1);
        runtime().spawn(async move {
            let options = BlobContainerClientListBlobsOptions {
                prefix: Some(prefix_owned),
                ..Default::default()
            };
            let mut pager = match client.list_blobs(Some(options)) {
                Ok(pager) => pager,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut page = Vec::new();
            while let Some(item) = pager.next().await {
                let item = match item {
                    Ok(item) => item,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                if let Some(key) = item.name {
                    let properties = item.properties.unwrap_or_default();
                    page.push(Listed {
                        key,
                        size: properties.content_length.unwrap_or(0),
                        version: properties.etag.map(|e| e.to_string()).unwrap_or_default(),
                    });
                }
                if page.len() == LIST_PAGE && tx.send(Ok(std::mem::take(&mut page))).is_err() {
                    return; // the caller stopped
                }
            }
            if !page.is_empty() {
                let _ = tx.send(Ok(page));
            }
        });
        // The service lists in name order; a page is sorted all the same, as the contract
        // says, whatever an emulator does.
        for page in rx {
            let mut page = page.map_err(|e| self.error("listing", prefix, e))?;
            page.sort();
            if each(page)?.is_break() {
                break; // dropping the receiver stops the listing
            }
        }
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        let blob = self.client()?.blob_client(key);
        match block_on(async move { blob.delete(None).await }) {
            Ok(_) => Ok(()),
            Err(e) if e.http_status() == Some(StatusCode::NotFound) => Ok(()),
            Err(e) => Err(self.error("deleting", key, e)),
        }
    }

    fn stage_block(&self, key: &str, block: u32, bytes: &[u8]) -> Result<(), StoreError> {
        check_key(key)?;
        let blob = self.client()?.blob_client(key).block_blob_client();
        let (id, length) = (block_id(block), bytes.len() as u64);
        let content = RequestContent::from(bytes.to_vec());
        block_on(async move { blob.stage_block(&id, length, content, None).await })
            .map(drop)
            .map_err(|e| self.error("staging a block of", key, e))
    }

    fn commit_blocks(&self, key: &str, blocks: &[u32]) -> Result<(), StoreError> {
        check_key(key)?;
        let blob = self.client()?.blob_client(key).block_blob_client();
        let list = BlockLookupList {
            latest: Some(blocks.iter().map(|&b| block_id(b)).collect()),
            ..Default::default()
        };
        block_on(async move { blob.commit_block_list(list.try_into()?, None).await })
            .map(drop)
            .map_err(|e| self.error("committing the blocks of", key, e))
    }

    fn discard_blocks(&self, _key: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn describe(&self) -> String {
        format!("Azure container {}", self.container_url)
    }

    fn location(&self, key: &str) -> String {
        format!(
            "{}/{key}",
            self.container_url.as_str().trim_end_matches('/')
        )
    }

    fn container(&self) -> &str {
        &self.container
    }

    fn shareable(&self, key: &str, lifetime: Duration) -> Option<String> {
        let Auth::Key {
            account,
            key: secret,
        } = &self.auth
        else {
            return None;
        };
        let container = &self.container;
        let content_type = key.ends_with(".html").then_some("text/html; charset=utf-8");
        let sas = blob_read_sas(
            account,
            secret,
            container,
            key,
            SystemTime::now() + lifetime,
            content_type,
        );
        Some(format!("{}?{sas}", self.location(key)))
    }
}

/// A service SAS that reads blob `blob` of `container` alone until `expiry`; with
/// `content_type`, the response says that type whatever the blob was uploaded as (a browser
/// shows an HTML report instead of downloading it).
fn blob_read_sas(
    account: &str,
    key: &[u8],
    container: &str,
    blob: &str,
    expiry: SystemTime,
    content_type: Option<&str>,
) -> String {
    let expiry = iso8601(expiry);
    let (permissions, resource, protocols) = ("r", "b", "https,http");
    let content_type = content_type.unwrap_or("");
    // The service SAS string-to-sign (versions 2020-12-06 and later): permissions, start,
    // expiry, canonical resource, identifier, IP range, protocols, version, resource,
    // snapshot time, encryption scope, then the five response header overrides (cache control,
    // disposition, encoding, language, type).
    let to_sign = [
        permissions,
        "",
        &expiry,
        &format!("/blob/{account}/{container}/{blob}"),
        "",
        "",
        protocols,
        SAS_VERSION,
        resource,
        "",
        "",
        "",
        "",
        "",
        "",
        content_type,
    ]
    .join("\n");
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(to_sign.as_bytes());
    let signature = BASE64.encode(mac.finalize().into_bytes());
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let mut sas = format!(
        "sv={SAS_VERSION}&sr={resource}&sp={permissions}&se={}&spr={}",
        encode(&expiry),
        encode(protocols)
    );
    if !content_type.is_empty() {
        sas.push_str(&format!("&rsct={}", encode(content_type)));
    }
    sas.push_str(&format!("&sig={}", encode(&signature)));
    sas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_parse() {
        let azurite = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;";
        let (url, auth) = parse_spec(azurite, None).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:10000/devstoreaccount1");
        assert!(matches!(auth, Auth::Key { ref account, .. } if account == DEV_ACCOUNT));
        let (url, _) = parse_spec("AccountName=acme;AccountKey=a2V5", Some("ignored")).unwrap();
        assert_eq!(url.as_str(), "https://acme.blob.core.windows.net/");
        assert!(
            parse_spec("AccountName=acme", None)
                .unwrap_err()
                .to_string()
                .contains("no AccountKey")
        );
        assert!(
            is_azure(azurite)
                && is_azure("https://acme.blob.core.windows.net")
                && !is_azure("/tmp/store")
        );
    }

    #[test]
    fn a_service_url_authenticates_as_the_managed_identity_named() {
        let url = "https://acme.blob.core.windows.net";
        let (_, auth) = parse_spec(url, Some("0c4f5e2a-1111-2222-3333-444455556666")).unwrap();
        assert_eq!(
            format!("{auth:?}"),
            "user-assigned managed identity 0c4f5e2a-1111-2222-3333-444455556666"
        );
        for none in [None, Some(""), Some("  ")] {
            let (_, auth) = parse_spec(url, none).unwrap();
            assert_eq!(format!("{auth:?}"), "system-assigned managed identity");
        }
        assert_eq!(managed_identity(Some(" id ")).as_deref(), Some("id"));
    }

    #[test]
    fn sas_is_signed_over_the_documented_fields() {
        let key = BASE64.decode(DEV_KEY).unwrap();
        let expiry = UNIX_EPOCH + Duration::from_secs(1_795_476_612);
        let sas = account_sas(DEV_ACCOUNT, &key, expiry);
        assert!(sas.starts_with("sv=2021-08-06&ss=b&srt=sco&sp=rwdlac&se=2026-11-23T23%3A30%3A12Z&spr=https%2Chttp&sig="), "{sas}");
        // Recompute the signature independently of the formatting above.
        let to_sign = "devstoreaccount1\nrwdlac\nb\nsco\n\n2026-11-23T23:30:12Z\n\nhttps,http\n2021-08-06\n\n";
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(to_sign.as_bytes());
        let expected = BASE64.encode(mac.finalize().into_bytes());
        let sig = sas.rsplit("sig=").next().unwrap();
        assert_eq!(
            url::form_urlencoded::parse(format!("s={sig}").as_bytes())
                .next()
                .unwrap()
                .1,
            expected
        );
    }
}
