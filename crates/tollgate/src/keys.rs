use crate::cli::{KeysAction, KeysArgs};
use anyhow::Result;
use std::process::ExitCode;
use tollgate_domain::time::iso;
use tollgate_server::clock::now_ms;
use tollgate_server::config::{DEFAULT_MASTER_KEY_ENV, RawConfig};
use tollgate_store::{KeyStore, NewKey, SecretSealer};

/// The environment variable holding the master key, as the config names it.
fn master_key_env(config: Option<std::path::PathBuf>) -> String {
    let env = crate::env_map();
    crate::config_path(config)
        .and_then(|p| RawConfig::load(Some(&p), &env).ok())
        .and_then(|raw| raw.server.master_key_env)
        .unwrap_or_else(|| DEFAULT_MASTER_KEY_ENV.to_string())
}

pub async fn keys(args: KeysArgs) -> Result<ExitCode> {
    let store = crate::open_store(args.db.clone(), args.config.config.clone(), false).await?;
    let db = crate::store_name(&store);
    match args.action {
        KeysAction::Create {
            team,
            agent,
            user,
            name,
            models,
            json,
        } => {
            let new = NewKey {
                name,
                team,
                agent,
                user,
                models,
            };
            // With the master key at hand the secret is also sealed, so the key can sign
            // AWS SigV4 requests (Bedrock clients) as well as be a bearer token.
            let master_env = master_key_env(args.config.config.clone());
            let sealer = std::env::var(&master_env)
                .ok()
                .filter(|k| !k.is_empty())
                .and_then(|k| SecretSealer::new(&k));
            let (key, secret) = store.create_key(&new, now_ms(), sealer.as_ref()).await?;
            let sigv4 = key.sealed_secret.is_some();
            if json {
                let mut v = serde_json::to_value(&key)?;
                if sigv4 {
                    v["aws_access_key_id"] = serde_json::Value::String(key.id.clone());
                    v["aws_secret_access_key"] = serde_json::Value::String(secret.clone());
                }
                v["key"] = serde_json::Value::String(secret);
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{secret}");
                eprintln!(
                    "created key {} (team {}, agent {}, user {}) in {}; the secret above is shown only once",
                    key.id,
                    key.team.as_deref().unwrap_or("-"),
                    key.agent.as_deref().unwrap_or("-"),
                    key.user.as_deref().unwrap_or("-"),
                    db
                );
                if sigv4 {
                    eprintln!(
                        "for AWS SDKs (boto3 bedrock-runtime, endpoint_url = tollgate): aws_access_key_id={} aws_secret_access_key=<the secret above>",
                        key.id
                    );
                } else {
                    eprintln!(
                        "{master_env} is not set: this key works as a bearer token only, not for AWS SigV4 (Bedrock) clients"
                    );
                }
            }
        }
        KeysAction::List => {
            println!(
                "{:<18} {:<14} {:<18} {:<12} {:<10} {:<24} status",
                "id", "team", "agent", "user", "name", "created"
            );
            for k in store.list_keys().await? {
                println!(
                    "{:<18} {:<14} {:<18} {:<12} {:<10} {:<24} {}",
                    k.id,
                    k.team.as_deref().unwrap_or("-"),
                    k.agent.as_deref().unwrap_or("-"),
                    k.user.as_deref().unwrap_or("-"),
                    k.name.as_deref().unwrap_or("-"),
                    iso(k.created_ms),
                    match k.revoked_ms {
                        Some(t) => format!("revoked {}", iso(t)),
                        None => "active".into(),
                    }
                );
            }
        }
        KeysAction::Revoke { id } => {
            if store.revoke_key(&id, now_ms()).await? {
                println!("revoked {id}");
            } else {
                eprintln!("no active key {id}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
