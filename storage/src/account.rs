//! Where the stores are: a storage account (a local directory of containers, or an Azure
//! account), the one container a command works on, and the containers a fleet serves.
//!
//! A job names its container in every message, so one fleet of workers and collectors serves
//! every container of its account ([`Containers`]), or those of an allow-list.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use crate::{BlobStore, StoreError, azure, check_container, local};

/// The storage account. Part of every binary's configuration; global, so that the producer
/// takes it before or after a subcommand (`producer --store DIR status`).
#[derive(Debug, Clone, clap::Args)]
pub struct AccountArgs {
    /// The store: a local directory (one sub-directory per container), an Azure Storage
    /// connection string, or a blob service URL (`https://<account>.blob.core.windows.net`,
    /// authenticated by the host's managed identity).
    #[arg(
        long,
        env = "FLEET_STORE",
        value_name = "DIR|CONNECTION STRING|URL",
        hide_env_values = true,
        global = true
    )]
    pub store: Option<String>,
    /// Azure Storage connection string, used when --store is not given.
    #[arg(
        long = "azure-connection-string",
        env = "AZURE_STORAGE_CONNECTION_STRING",
        hide_env_values = true,
        global = true
    )]
    pub connection_string: Option<String>,
    /// Client id of the user-assigned managed identity to authenticate as when the store is a
    /// blob service URL (the deployment sets it); without it, the system-assigned identity.
    #[arg(
        long = "managed-identity-client-id",
        env = "AZURE_CLIENT_ID",
        global = true
    )]
    pub managed_identity_client_id: Option<String>,
}

impl AccountArgs {
    /// An account given as a local directory or an Azure connection string.
    pub fn new(store: impl Into<String>) -> Self {
        AccountArgs {
            store: Some(store.into()),
            connection_string: None,
            managed_identity_client_id: None,
        }
    }

    /// The store as given: a directory, a connection string or a URL; refused when none is.
    pub fn spec(&self) -> Result<&str, StoreError> {
        (self.store.as_deref())
            .or(self.connection_string.as_deref())
            .ok_or_else(|| {
                StoreError::config(
                    "no store given: pass --store DIR for a local store, or an Azure connection \
                     string (--store or AZURE_STORAGE_CONNECTION_STRING)",
                )
            })
    }

    /// Opens container `container` of the account; with `create`, makes it if it does not
    /// exist. Blocking (it may talk to Azure): call it from a blocking context.
    pub fn open(&self, container: &str, create: bool) -> Result<Arc<dyn BlobStore>, StoreError> {
        let spec = self.spec()?;
        check_container(container).map_err(StoreError::config)?;
        if azure::is_azure(spec) {
            return Ok(Arc::new(azure::AzureStore::open(
                spec,
                container,
                create,
                self.managed_identity_client_id.as_deref(),
            )?));
        }
        let root = std::path::Path::new(spec);
        let store = if create {
            local::LocalStore::create(root, container)?
        } else {
            local::LocalStore::open(root, container)?
        };
        Ok(Arc::new(store))
    }
}

/// Where the container is: an account and one of its containers. The producer's
/// configuration; global, like [`AccountArgs`] (`producer --container x status`).
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Blob container holding the dataset, models and results (3 to 63 lowercase letters,
    /// digits and hyphens).
    #[arg(long, env = "FLEET_CONTAINER", default_value = "fleet", value_parser = container_name, global = true)]
    pub container: String,
    /// The account.
    #[command(flatten)]
    pub account: AccountArgs,
}

/// `--container`'s parser: [`check_container`].
fn container_name(name: &str) -> Result<String, String> {
    check_container(name).map(|()| name.to_owned())
}

impl StoreArgs {
    /// [`StoreArgs::open`] from async code: run on the blocking pool.
    pub async fn open_async(&self, create: bool) -> Result<Arc<dyn BlobStore>, StoreError> {
        let args = self.clone();
        tokio::task::spawn_blocking(move || args.open(create))
            .await
            .map_err(|e| StoreError::Config {
                message: "opening the store failed".into(),
                source: Some(e.into()),
            })?
    }

    /// Opens the container; with `create`, makes it if it does not exist. Blocking (it may
    /// talk to Azure): call it from a blocking context.
    pub fn open(&self, create: bool) -> Result<Arc<dyn BlobStore>, StoreError> {
        self.account.open(&self.container, create)
    }
}

/// What a fleet's workers and collector serve: an account, and optionally the containers of it
/// they may work in. Part of the `worker` and `collector` configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetStoreArgs {
    /// The account.
    #[command(flatten)]
    pub account: AccountArgs,
    /// Serve only jobs of these containers, comma-separated [default: every container of the
    /// account: each job names its own]. A job of another is dead-lettered with the reason.
    #[arg(long, env = "FLEET_CONTAINERS", value_delimiter = ',', value_parser = container_name)]
    pub containers: Vec<String>,
}

impl FleetStoreArgs {
    /// The containers these arguments serve.
    pub fn containers(&self) -> Containers {
        Containers::of_account(self.account.clone(), self.containers.iter().cloned())
    }
}

/// The containers a fleet serves, each opened on first use and kept: every container of an
/// account, those of an allow-list, or (the embedded run) one store alone.
#[derive(Debug)]
pub struct Containers {
    /// Where containers not yet open are opened from; `None` when only `open` is served.
    account: Option<AccountArgs>,
    /// The containers served; `None`: every one of the account.
    allowed: Option<BTreeSet<String>>,
    open: Mutex<HashMap<String, Arc<dyn BlobStore>>>,
}

impl Containers {
    /// Whether `error`, from [`Containers::get`], refuses the container a message named
    /// (not served, no such container, a name no container can have) rather than saying the
    /// store failed: the message is the job's mistake, and no retry mends it.
    pub fn refuses(error: &StoreError) -> bool {
        matches!(
            error,
            StoreError::NotServed { .. }
                | StoreError::BadContainer(_)
                | StoreError::NoContainer { .. }
        )
    }

    /// Every container of `account`, or only those of `allowed` when it names any.
    pub fn of_account(account: AccountArgs, allowed: impl IntoIterator<Item = String>) -> Self {
        let allowed: BTreeSet<String> = allowed.into_iter().collect();
        Containers {
            account: Some(account),
            allowed: (!allowed.is_empty()).then_some(allowed),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Container `name`, already open as `store`, and no other.
    pub fn one(name: &str, store: Arc<dyn BlobStore>) -> Self {
        Containers {
            account: None,
            allowed: Some(BTreeSet::from([name.to_owned()])),
            open: Mutex::new(HashMap::from([(name.to_owned(), store)])),
        }
    }

    /// Container `name`, opened on first use. Refused ([`StoreError::NotServed`]) when it is
    /// not one of those served, [`StoreError::BadContainer`] when no container can have its
    /// name; [`StoreError::NoContainer`] when the account has no such container. Blocking (opening may talk to Azure): call it from a blocking context.
    pub fn get(&self, name: &str) -> Result<Arc<dyn BlobStore>, StoreError> {
        check_container(name).map_err(StoreError::BadContainer)?;
        if let Some(allowed) = &self.allowed
            && !allowed.contains(name)
        {
            return Err(StoreError::NotServed {
                container: name.to_owned(),
                served: allowed.iter().cloned().collect(),
            });
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(store) = open.get(name) {
            return Ok(store.clone());
        }
        let account = self.account.as_ref().ok_or_else(|| StoreError::NotServed {
            container: name.to_owned(),
            served: open.keys().cloned().collect(),
        })?;
        let store = account.open(name, false)?;
        open.insert(name.to_owned(), store.clone());
        Ok(store)
    }

    /// Container `name` whether it is served or not, to tell a job's submitter why it is not
    /// (the note of a dead letter): never to score or write results in.
    pub fn to_tell(&self, name: &str) -> Result<Arc<dyn BlobStore>, StoreError> {
        match (self.get(name), &self.account) {
            (Err(StoreError::NotServed { .. }), Some(account)) => account.open(name, false),
            (outcome, _) => outcome,
        }
    }

    /// Opens every container of the allow-list, so that a fleet set up with one that is not
    /// there (or an account it cannot reach) says so as it starts. Blocking.
    pub fn check(&self) -> Result<(), StoreError> {
        for name in self.allowed.iter().flatten() {
            self.get(name)?;
        }
        Ok(())
    }

    /// What is served, for a log line: the allow-list, or "every container of the account".
    pub fn describe(&self) -> String {
        match &self.allowed {
            Some(allowed) => format!(
                "containers {}",
                allowed.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            None => "every container of the account".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allow_list_refuses_other_containers_and_the_rest_open_on_first_use() {
        let root = tempfile::tempdir().unwrap();
        for name in ["photos", "other"] {
            local::LocalStore::create(root.path(), name).unwrap();
        }
        let account = AccountArgs::new(root.path().to_str().unwrap());
        let any = Containers::of_account(account.clone(), []);
        any.get("photos").unwrap().put("a", b"1").unwrap();
        assert_eq!(any.get("photos").unwrap().get("a").unwrap(), b"1");
        assert!(any.get("other").is_ok());
        assert!(matches!(
            any.get("missing"),
            Err(StoreError::NoContainer { .. })
        ));

        let listed = Containers::of_account(account, ["photos".to_owned()]);
        assert!(listed.get("photos").is_ok());
        let refused = listed.get("other").unwrap_err();
        assert!(
            matches!(refused, StoreError::NotServed { .. }),
            "{refused:?}"
        );
        assert!(refused.to_string().contains("photos"), "{refused}");

        let store = any.get("photos").unwrap();
        let one = Containers::one("photos", store);
        assert_eq!(one.get("photos").unwrap().get("a").unwrap(), b"1");
        assert!(matches!(
            one.get("other"),
            Err(StoreError::NotServed { .. })
        ));
    }
}
