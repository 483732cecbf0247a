//! An in-process gateway on a free port, with its own temporary database.

use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tollgate_server::clock::now_ms;
use tollgate_server::config::RawConfig;
use tollgate_store::{NewKey, SecretSealer, SqliteStore};

/// The master key every harness gateway uses.
pub const MASTER_KEY: &str = "tg-master-test";

pub struct TestGateway {
    pub addr: SocketAddr,
    /// A virtual key owned by team `team-a`, agent `agent-a`. Its id and secret are also
    /// an AWS access key id and secret access key (SigV4).
    pub key: String,
    pub key_id: String,
    pub store: SqliteStore,
    stop: CancellationToken,
    join: Option<JoinHandle<Result<(), tollgate_server::ServerError>>>,
    dir: Option<tempfile::TempDir>,
}

/// A stopped gateway's database (kept until this is dropped).
pub struct Stopped {
    pub store: SqliteStore,
    _dir: Option<tempfile::TempDir>,
}

impl std::ops::Deref for Stopped {
    type Target = SqliteStore;
    fn deref(&self) -> &SqliteStore {
        &self.store
    }
}

impl TestGateway {
    /// Start a gateway whose config is `config_toml` (its `[ledger] path` is replaced by
    /// a temporary file). `env` holds the environment the config may read.
    pub async fn start(config_toml: &str, env: HashMap<String, String>) -> TestGateway {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        let db = dir.path().join("ledger.db");
        let mut gw = TestGateway::start_on(config_toml, env, &db).await;
        gw.dir = Some(dir);
        gw
    }

    /// [`TestGateway::start`] on an existing database file (a restart), which the
    /// caller keeps.
    pub async fn start_on(
        config_toml: &str,
        mut env: HashMap<String, String>,
        db: &std::path::Path,
    ) -> TestGateway {
        env.insert("TOLLGATE__LEDGER__PATH".into(), db.display().to_string());
        env.insert("TOLLGATE_MASTER_KEY".into(), MASTER_KEY.into());
        let raw = match RawConfig::from_toml(config_toml, &env) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        let cfg = match raw.validate(&env) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let store = match SqliteStore::open(db) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        // Sealed under the master key, so the key also signs AWS SigV4 requests.
        let sealer = SecretSealer::new(MASTER_KEY);
        let (k, key) = match store.create_key_sealed(
            &NewKey {
                team: Some("team-a".into()),
                agent: Some("agent-a".into()),
                ..NewKey::default()
            },
            now_ms(),
            sealer.as_ref(),
        ) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        };
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("bind: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        let stop = CancellationToken::new();
        let s = stop.clone();
        #[allow(clippy::disallowed_methods)] // the harness owns the server task itself
        let join = tokio::spawn(tollgate_server::run(listener, cfg, async move {
            s.cancelled().await
        }));
        TestGateway {
            addr,
            key,
            key_id: k.id,
            store,
            stop,
            join: Some(join),
            dir: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stop gracefully and wait until the ledger is flushed.
    pub async fn stop(mut self) -> Stopped {
        self.stop.cancel();
        if let Some(j) = self.join.take() {
            match j.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("server error: {e}"),
                Err(e) => panic!("server task: {e}"),
            }
        }
        Stopped {
            store: self.store.clone(),
            _dir: self.dir.take(),
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A config with one upstream named `up` at `base_url` and the given deployments
/// (`(name, upstream model)`, priced from the embedded catalog).
pub fn config_for(base_url: &str, deployments: &[(&str, &str)], extra: &str) -> String {
    let mut s = format!("{extra}\n[[upstreams]]\nname = \"up\"\nbase_url = \"{base_url}\"\n");
    for (name, model) in deployments {
        s.push_str(&format!(
            "[[deployments]]\nname = \"{name}\"\nupstream = \"up\"\nmodel = \"{model}\"\n"
        ));
    }
    s
}
