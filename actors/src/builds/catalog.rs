//! Stored configurations and templates: create (checked against the pool, naming what is
//! short), read by name or id, update by JSON merge, delete, and templates instantiated with
//! variables; every change is recorded in the ledger.

use std::collections::BTreeMap;

use rand::RngCore;

use super::{config, BuildError, Builds, ConfigSummary};
use crate::store::StoreError;
use crate::wire;

impl Builds {
    /// Checks a configuration on its own and against the pool, after node names in it are
    /// replaced by ids ([`config::BuildConfiguration::resolve_node_names`]).
    async fn check(&self, cfg: &mut config::BuildConfiguration) -> Result<(), BuildError> {
        let pool = self.pool.view().await.map_err(|_| BuildError::Unavailable)?;
        let mut problems = cfg.resolve_node_names(&pool.nodes);
        let named: Vec<String> = problems.iter().map(|p| p.field.clone()).collect();
        problems.extend(cfg.validate().into_iter().filter(|p| !named.contains(&p.field)));
        if !problems.is_empty() {
            return Err(BuildError::InvalidConfig(problems));
        }
        let short = cfg.check_against(&pool, &self.node_id);
        if !short.is_empty() {
            return Err(BuildError::Insufficient(short));
        }
        Ok(())
    }

    /// Saves a new configuration; returns its id.
    pub async fn create_config(
        &self,
        mut cfg: config::BuildConfiguration,
        by: &str,
        template: bool,
    ) -> Result<String, BuildError> {
        self.check(&mut cfg).await?;
        let id = cfg.id.clone().filter(|i| !i.trim().is_empty()).unwrap_or_else(|| {
            let mut raw = [0u8; 6];
            rand::rngs::OsRng.fill_bytes(&mut raw);
            format!("cfg_{}", wire::hex(&raw))
        });
        cfg.id = Some(id.clone());
        // Whoever sends it: not the body's own say (a template's "system", an exported config's
        // author on another node, or a name made up).
        cfg.created_by = Some(by.to_string());
        let (row, name, now) = (cfg.clone(), cfg.name.clone(), wire::now_ms() as i64);
        let inserted = self
            .store
            .run(move |c| {
                let json = serde_json::to_string(&row).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let n = c.execute(
                    "INSERT OR IGNORE INTO configurations (id, name, description, config_data, created_by, created_at, updated_at, is_template, template_category)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8)",
                    rusqlite::params![row.id, row.name, row.description, json, row.created_by, now, template, template.then_some("custom")],
                )?;
                Ok(n)
            })
            .await?;
        if inserted == 0 {
            return Err(BuildError::Duplicate(name));
        }
        let kind = crate::wire::LedgerEntryType::ConfigCreated;
        let _ = self
            .ledger
            .append(
                kind,
                serde_json::json!({ "config_id": id, "config_name": name, "created_by": by, "template": template }),
            )
            .await;
        Ok(id)
    }

    /// A configuration (or custom template) by id or name.
    pub async fn config(&self, key: &str) -> Result<config::BuildConfiguration, BuildError> {
        let data = self
            .store
            .optional_text("SELECT config_data FROM configurations WHERE id = ?1 OR name = ?1", key.to_string())
            .await?;
        data.and_then(|d| stored(key, &d)).ok_or_else(|| BuildError::NoConfig(key.to_string()))
    }

    /// Stored configurations (or custom templates): JSON, last change, description.
    async fn config_rows(&self, templates: bool) -> Result<Vec<(String, i64, Option<String>)>, BuildError> {
        Ok(self
            .store
            .run(move |c| {
                let mut stmt = c.prepare(
                    "SELECT config_data, updated_at, description FROM configurations WHERE is_template = ?1 ORDER BY name",
                )?;
                let rows = stmt.query_map([templates], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await?)
    }

    /// Every saved configuration (templates are listed apart).
    pub async fn configs(&self) -> Result<Vec<ConfigSummary>, BuildError> {
        Ok(self
            .config_rows(false)
            .await?
            .into_iter()
            .filter_map(|(data, updated, _)| {
                let cfg: config::BuildConfiguration = stored("(list)", &data)?;
                Some(ConfigSummary {
                    id: cfg.id.clone().unwrap_or_default(),
                    name: cfg.name.clone(),
                    description: cfg.description.clone(),
                    cores: cfg.resources.cpu.cores_at_most(),
                    memory_gb: cfg.resources.memory.gb,
                    nodes: cfg.resources.cpu.node_allocations.iter().flatten().map(|a| a.node_id.clone()).collect(),
                    updated_at_ms: updated as u64,
                })
            })
            .collect())
    }

    /// Replaces a configuration with `patch` merged into it (JSON merge: objects merge, the rest
    /// replaces).
    pub async fn update_config(
        &self,
        key: &str,
        patch: serde_json::Value,
        by: &str,
    ) -> Result<config::BuildConfiguration, BuildError> {
        let current = self.config(key).await?;
        let mut doc = serde_json::to_value(&current).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        merge(&mut doc, patch);
        let mut cfg: config::BuildConfiguration = serde_path_to_error::deserialize(doc).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { "(body)".to_string() } else { field };
            BuildError::InvalidConfig(vec![config::Problem { field, message: e.into_inner().to_string() }])
        })?;
        // Its id and author are the configuration's, not the patch's.
        cfg.id = current.id.clone();
        cfg.created_by = current.created_by.clone();
        self.check(&mut cfg).await?;
        let (row, now) = (cfg.clone(), wire::now_ms() as i64);
        self.store
            .run(move |c| {
                let json = serde_json::to_string(&row).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                c.execute(
                    "UPDATE configurations SET name = ?2, description = ?3, config_data = ?4, updated_at = ?5 WHERE id = ?1",
                    rusqlite::params![row.id, row.name, row.description, json, now],
                )?;
                Ok(())
            })
            .await?;
        let _ = self
            .ledger
            .append(
                crate::wire::LedgerEntryType::ConfigModified,
                serde_json::json!({ "config_id": cfg.id, "config_name": cfg.name, "modified_by": by }),
            )
            .await;
        Ok(cfg)
    }

    pub async fn delete_config(&self, key: &str, by: &str) -> Result<(), BuildError> {
        let cfg = self.config(key).await?;
        let id = cfg.id.clone().unwrap_or_default();
        let gone = id.clone();
        self.store.run(move |c| Ok(c.execute("DELETE FROM configurations WHERE id = ?1", [gone])?)).await?;
        let _ = self
            .ledger
            .append(
                crate::wire::LedgerEntryType::ConfigModified,
                serde_json::json!({ "config_id": id, "config_name": cfg.name, "deleted": true, "modified_by": by }),
            )
            .await;
        Ok(())
    }

    /// System templates, then custom ones.
    pub async fn templates(&self) -> Result<Vec<config::ConfigTemplate>, BuildError> {
        let mut list = config::system_templates();
        for (data, _, description) in self.config_rows(true).await? {
            if let Some(cfg) = stored("(template)", &data) {
                list.push(config::ConfigTemplate {
                    id: cfg.id.clone().unwrap_or_default(),
                    name: cfg.name.clone(),
                    description: description.unwrap_or_default(),
                    icon: "star".into(),
                    category: "custom".into(),
                    config: cfg,
                    variables: vec![],
                    use_cases: vec![],
                    system: false,
                });
            }
        }
        Ok(list)
    }

    pub async fn template(&self, key: &str) -> Result<config::ConfigTemplate, BuildError> {
        self.templates()
            .await?
            .into_iter()
            .find(|t| t.id == key || t.name == key)
            .ok_or_else(|| BuildError::NoConfig(key.to_string()))
    }

    /// Saves a configuration as a custom template.
    pub async fn save_template(
        &self,
        config_key: &str,
        name: &str,
        description: Option<String>,
        by: &str,
    ) -> Result<String, BuildError> {
        let mut cfg = self.config(config_key).await?;
        cfg.id = None;
        cfg.name = name.to_string();
        cfg.description = description;
        self.create_config(cfg, by, true).await
    }

    /// A new configuration from a template.
    pub async fn use_template(
        &self,
        template: &str,
        name: &str,
        values: &BTreeMap<String, String>,
        by: &str,
    ) -> Result<String, BuildError> {
        let t = self.template(template).await?;
        let cfg = t.instantiate(name, values).map_err(|p| BuildError::InvalidConfig(vec![p]))?;
        self.create_config(cfg, by, false).await
    }
}

/// RFC 7386 JSON merge.
fn merge(target: &mut serde_json::Value, patch: serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge(t.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
        }
        (t, p) => *t = p,
    }
}

impl Builds {
    /// The configuration a request asks for: its inline one (checked like a saved one), else
    /// [`Builds::resolve`].
    pub async fn resolve_request(
        &self,
        req: &super::runner::BuildRequest,
    ) -> Result<Option<config::BuildConfiguration>, BuildError> {
        match &req.inline_config {
            Some(c) => {
                let mut c = c.clone();
                self.check(&mut c).await?;
                Ok(Some(c))
            }
            None => self.resolve(req.config.as_deref(), req.template.as_deref()).await,
        }
    }

    /// Resolves the configuration a build asks for (by name or id, or from a template).
    pub async fn resolve(
        &self,
        config: Option<&str>,
        template: Option<&str>,
    ) -> Result<Option<config::BuildConfiguration>, BuildError> {
        let mut cfg = match (config, template) {
            (Some(c), _) => Some(self.config(c).await?),
            (None, Some(t)) => {
                let t = self.template(t).await?;
                Some(t.instantiate(&t.name, &BTreeMap::new()).map_err(|p| BuildError::InvalidConfig(vec![p]))?)
            }
            (None, None) => None,
        };
        if let Some(c) = &mut cfg {
            self.check(c).await?;
        }
        Ok(cfg)
    }
}

/// A configuration as stored, or None — said in the log, since it then looks absent: one
/// written by another BuildNet version may hold a field this one does not know.
fn stored(key: &str, data: &str) -> Option<config::BuildConfiguration> {
    serde_json::from_str(data)
        .map_err(|e| log::warn!("configuration {key}: stored in a shape this version cannot read ({e}); left out"))
        .ok()
}
