//! kata-ctl: the host tool. `check`, `env`, `exec <sandbox-id>`, `pool status|stop`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use kata_shim::config::{load, Config, LoadRequest, Loaded};
use kata_shim::ctl::{check, console, env};

const USAGE: &str = "usage: kata-ctl [--config FILE] <command>

commands:
  check [--containerd-config FILE]   can this host run VM sandboxes, and does containerd send pods
                                     here (handlers kata and untrusted)? one line per check, with
                                     a fix; with no configuration file yet, the built-in defaults
  env                                effective configuration and where each value came from
  exec <sandbox-id>                  open the guest debug console (needs debug_console_enabled)
  pool status                        the VM pool: per configuration, VMs wanted, ready, booting,
                                     served and failed, as JSON lines (nothing: no pool daemon)
  pool stop                          stop the pool daemon and its waiting VMs (pods keep theirs)

The configuration is found like the shim finds it: --config, $KATA_CONF_FILE,
/etc/kata-containers/configuration.toml, /usr/share/defaults/kata-containers/configuration.toml.";

struct Args {
    config: Option<PathBuf>,
    containerd_config: Option<PathBuf>,
    command: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        config: None,
        containerd_config: None,
        command: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => args.config = Some(it.next().context("--config needs a file")?.into()),
            "--containerd-config" => {
                args.containerd_config = Some(
                    it.next()
                        .context("--containerd-config needs a file")?
                        .into(),
                )
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => args.command.push(a),
        }
    }
    Ok(args)
}

fn load_config(explicit: Option<&PathBuf>) -> Result<(Config, PathBuf)> {
    let loaded = load(&LoadRequest {
        config_path: explicit.cloned(),
        ..Default::default()
    })?;
    print_warnings(&loaded);
    Ok((loaded.config, loaded.path))
}

fn print_warnings(loaded: &Loaded) {
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
}

async fn run() -> Result<ExitCode> {
    let args = parse_args()?;
    let Some(cmd) = args.command.first() else {
        bail!("{USAGE}");
    };
    match cmd.as_str() {
        "check" => {
            let loaded = load(&LoadRequest {
                config_path: args.config.clone(),
                ..Default::default()
            });
            if let Ok(l) = &loaded {
                print_warnings(l);
            }
            let mut inputs = check::CheckInputs::default();
            if let Some(c) = args.containerd_config {
                inputs.containerd_config = c;
            }
            let findings = check::run_all(loaded, &inputs).await;
            let mut failed = false;
            for f in &findings {
                println!(
                    "{:<6} {}: {}",
                    format!("[{}]", f.status.label()),
                    f.what,
                    f.detail
                );
                if let Some(fix) = &f.fix {
                    for (i, line) in fix.lines().enumerate() {
                        println!("       {}{line}", if i == 0 { "fix: " } else { "     " });
                    }
                }
                failed |= f.status == check::Status::Fail;
            }
            Ok(ExitCode::from(u8::from(failed)))
        }
        "env" => {
            let (config, path) = load_config(args.config.as_ref())?;
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            print!(
                "{}",
                env::render(&config, &path, &text, args.config.is_some())
            );
            Ok(ExitCode::SUCCESS)
        }
        "exec" => {
            let Some(id) = args.command.get(1) else {
                bail!("exec needs a sandbox id\n\n{USAGE}");
            };
            let (config, _) = load_config(args.config.as_ref())?;
            console::exec(&config, id).await?;
            Ok(ExitCode::SUCCESS)
        }
        "pool" => match args.command.get(1).map(String::as_str) {
            Some("status") => {
                for p in kata_shim::pool::client::status().await? {
                    println!("{}", serde_json::to_string(&p)?);
                }
                Ok(ExitCode::SUCCESS)
            }
            Some("stop") => {
                kata_shim::pool::client::stop().await?;
                Ok(ExitCode::SUCCESS)
            }
            _ => bail!("pool needs status or stop\n\n{USAGE}"),
        },
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kata-ctl: {e:#}");
            ExitCode::from(2)
        }
    }
}
