//! `--conf KEY=VALUE` handling: rpcenv's known keys, validated, and free keys under `app.`.

use anyhow::{bail, Context};
use rpcenv::RpcConf;

/// Builds the configuration from `--conf` arguments. A key must be one of rpcenv's settings or
/// live under the free `app.` namespace; a bad value is refused naming the key.
pub fn conf_from_args(pairs: &[String]) -> anyhow::Result<RpcConf> {
    let mut conf = RpcConf::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--conf {pair:?}: expected KEY=VALUE, e.g. --conf rpc.askTimeout=10s");
        };
        let key = key.trim();
        let bare = key.strip_prefix("spark.").unwrap_or(key);
        if rpcenv::conf::known_key(bare).is_none() && !bare.starts_with("app.") {
            bail!(
                "--conf {key}: unknown setting {key:?} (rpcenv's settings are listed in the README; \
                 application settings go under app., e.g. app.{bare})"
            );
        }
        conf.set(key, value)
            .with_context(|| format!("--conf {pair}"))?;
    }
    Ok(conf)
}

/// The application setting `key` as a whole number, or `default` when unset; a bad value is refused
/// naming the key.
pub fn app_u64(conf: &RpcConf, key: &str, default: u64) -> anyhow::Result<u64> {
    match conf.get(key) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .with_context(|| format!("--conf {key}={v}: expected a whole number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_app_keys_are_accepted() {
        let conf = conf_from_args(&[
            "rpc.askTimeout=10s".into(),
            "spark.rpc.numRetries=5".into(),
            "app.color=blue".into(),
        ])
        .unwrap();
        assert_eq!(conf.num_retries(), 5);
        assert_eq!(conf.get("app.color"), Some("blue"));
    }

    #[test]
    fn unknown_keys_bad_values_and_malformed_pairs_name_the_problem() {
        let e = conf_from_args(&["rpc.askTimout=10s".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("rpc.askTimout"), "{e:#}");
        let e = conf_from_args(&["rpc.askTimeout=soon".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("rpc.askTimeout"), "{e:#}");
        let e = conf_from_args(&["rpc.askTimeout".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("KEY=VALUE"), "{e:#}");
    }

    #[test]
    fn app_numbers_default_parse_and_name_the_key_when_bad() {
        let conf = conf_from_args(&["app.n=12".into(), "app.bad=x".into()]).unwrap();
        assert_eq!(app_u64(&conf, "app.n", 5).unwrap(), 12);
        assert_eq!(app_u64(&conf, "app.unset", 5).unwrap(), 5);
        let e = app_u64(&conf, "app.bad", 5).unwrap_err();
        assert!(format!("{e:#}").contains("app.bad"), "{e:#}");
    }
}
