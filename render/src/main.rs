//! `llm-failover`, the project's command-line tool. `render` turns a plugin
//! configuration into a complete Envoy bootstrap: the provider clusters (from each
//! provider's `endpoint`), the route whose retries walk the filter's attempt order,
//! the filter downstream and on every provider cluster, stats tags, a JSON access
//! log and the operators' health view. Users write the plugin configuration; the
//! wiring around it is never hand-written. `check` compares a plugin configuration
//! with a bootstrap written by hand (a provider whose `cluster` names no cluster).

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod bootstrap;
mod check;
mod clusters;
mod istio;
mod routes;

use std::process::ExitCode;

/// What render and check pass as every environment variable the configuration
/// names (keys, the control secret): the values are Envoy's, set where it runs, and
/// only their presence is checked then. Long enough for the control secret's rule.
pub(crate) const ENV_STAND_IN: &str = "set-in-envoy-environment";

const USAGE: &str = "usage: llm-failover render --config PLUGIN.json [--listen HOST:PORT] \
[--admin HOST:PORT] [--ops HOST:PORT] [--wasm PATH | --native [--module PATH]] [--format yaml|json]
       llm-failover render --config PLUGIN.json --istio [--namespace NS] [--gateway-patch]
       llm-failover check --config PLUGIN.json --envoy ENVOY.yaml";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("llm-failover: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_check(args: &[String]) -> Result<String, String> {
    let (mut plugin, mut envoy) = (None, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .cloned()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--config" => plugin = Some(value),
            "--envoy" => envoy = Some(value),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    let (Some(plugin), Some(envoy)) = (plugin, envoy) else {
        return Err(format!("check needs --config and --envoy\n{USAGE}"));
    };
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("reading {p}: {e}"));
    let raw = read(&plugin)?;
    let bootstrap: serde_json::Value = serde_yaml::from_str(&read(&envoy)?)
        .map_err(|e| format!("{envoy}: not YAML or JSON: {e}"))?;
    let problems = check::check(&raw, &bootstrap)?;
    if problems.is_empty() {
        Ok(format!("{plugin} fits {envoy}\n"))
    } else {
        Err(problems.join("\n"))
    }
}

fn run(args: &[String]) -> Result<String, String> {
    let Some((command, rest)) = args.split_first() else {
        return Err(USAGE.to_string());
    };
    if command == "check" {
        return run_check(rest);
    }
    if command != "render" {
        return Err(format!("unknown command {command:?}\n{USAGE}"));
    }
    let mut options = bootstrap::Options::default();
    let mut istio = false;
    let mut namespace = None;
    let mut gateway_patch = false;
    let mut config_path = None;
    let mut json = false;
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--config" => config_path = Some(value()?),
            "--listen" => options.listen = bootstrap::address(&value()?, "--listen")?,
            "--admin" => options.admin = bootstrap::address(&value()?, "--admin")?,
            "--ops" => options.ops = bootstrap::address(&value()?, "--ops")?,
            "--wasm" => options.wasm = value()?,
            "--native" => options.native = true,
            "--module" => options.module = value()?,
            "--istio" => istio = true,
            "--namespace" => namespace = Some(value()?),
            "--gateway-patch" => gateway_patch = true,
            "--format" => {
                json = match value()?.as_str() {
                    "json" => true,
                    "yaml" => false,
                    other => return Err(format!("--format {other:?}: expected yaml or json")),
                }
            }
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    let path = config_path.ok_or_else(|| format!("--config is required\n{USAGE}"))?;
    let raw = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    let command = rest.join(" ");
    let banner = format!(
        "# Rendered by `llm-failover render {command}`: edit the plugin\n\
         # configuration and render again rather than editing this file.\n"
    );
    if istio {
        let mut o = istio::IstioOptions::default();
        if let Some(ns) = namespace {
            o.namespace = ns;
        }
        if options.native {
            return Err(
                "--istio takes the .wasm (Istio's proxy has no native module of ours)".into(),
            );
        }
        let (docs, patch) = istio::render(&raw, &o)?;
        let out = if gateway_patch {
            serde_yaml::to_string(&patch).map_err(|e| e.to_string())?
        } else {
            istio::to_yaml(&docs)?
        };
        return Ok(banner + &out);
    }
    if gateway_patch || namespace.is_some() {
        return Err(format!(
            "--gateway-patch and --namespace go with --istio\n{USAGE}"
        ));
    }
    let (doc, warnings) = bootstrap::render(&raw, &options)?;
    for w in warnings {
        eprintln!("llm-failover: warning: {w}");
    }
    if json {
        serde_json::to_string_pretty(&doc)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string())
    } else {
        let yaml = serde_yaml::to_string(&doc).map_err(|e| e.to_string())?;
        Ok(banner + &yaml)
    }
}
