use crate::cli::{KeysAction, KeysArgs};
use crate::db_path;
use anyhow::Result;
use std::process::ExitCode;
use tollgate_server::admin::iso;
use tollgate_server::state::now_ms;
use tollgate_store::{NewKey, SqliteStore};

pub fn keys(args: KeysArgs) -> Result<ExitCode> {
    let db = db_path(args.db.clone(), args.config.config.clone())?;
    let store = SqliteStore::open(&db)?;
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
            let (key, secret) = store.create_key(&new, now_ms())?;
            if json {
                let mut v = serde_json::to_value(&key)?;
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
                    db.display()
                );
            }
        }
        KeysAction::List => {
            println!(
                "{:<18} {:<14} {:<18} {:<12} {:<10} {:<24} status",
                "id", "team", "agent", "user", "name", "created"
            );
            for k in store.list_keys()? {
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
            if store.revoke_key(&id, now_ms())? {
                println!("revoked {id}");
            } else {
                eprintln!("no active key {id}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
