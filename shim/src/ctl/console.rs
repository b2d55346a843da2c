//! `kata-ctl exec <sandbox-id>`: a shell on the guest's debug console (vsock port
//! protocol::DEBUG_CONSOLE_PORT), only when the configuration enables it.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use anyhow::{bail, Context, Result};
use nix::sys::termios::{self, SetArg, Termios};

use crate::config::Config;
use crate::guest::vsock::Dialer;
use crate::hypervisor::layout::{run_root, VmPaths};

/// How to reach a running sandbox's guest ports from another process.
pub fn sandbox_dialer(sandbox_id: &str) -> Result<Dialer> {
    if sandbox_id.is_empty()
        || sandbox_id.contains('/')
        || sandbox_id.starts_with('.')
        || sandbox_id.len() > 128
    {
        bail!("invalid sandbox id {sandbox_id:?}");
    }
    let paths = VmPaths::new(run_root().join(sandbox_id));
    if !paths.dir().is_dir() {
        bail!(
            "no sandbox {sandbox_id:?}: {} does not exist (is it running on this host?)",
            paths.dir().display()
        );
    }
    let uds = paths.hybrid_vsock();
    if uds.exists() {
        return Ok(Dialer::Hybrid { uds_path: uds });
    }
    bail!(
        "sandbox {sandbox_id:?} has no hybrid vsock socket at {}; the debug console over kernel \
         vhost-vsock is not supported yet",
        uds.display()
    )
}

/// Puts the terminal in raw mode until dropped, so keys reach the guest shell unchanged.
struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    fn enter() -> Result<Option<RawTerminal>> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let saved = termios::tcgetattr(stdin.as_fd()).context("reading terminal settings")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).context("setting raw mode")?;
        Ok(Some(RawTerminal { saved }))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// Connects this terminal to the sandbox's debug console until the guest side closes.
pub async fn exec(config: &Config, sandbox_id: &str) -> Result<()> {
    if !config.agent.debug_console_enabled {
        bail!(
            "the debug console is disabled: set [agent.kata] debug_console_enabled = true in {} \
             (it applies to sandboxes started after the change)",
            config
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "the configuration".into())
        );
    }
    let dialer = sandbox_dialer(sandbox_id)?;
    let stream = dialer
        .dial(protocol::DEBUG_CONSOLE_PORT)
        .await
        .with_context(|| format!("opening the debug console of sandbox {sandbox_id:?}"))?;
    let _raw = RawTerminal::enter()?;
    let (mut from_guest, mut to_guest) = tokio::io::split(stream);
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let input = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut stdin, &mut to_guest).await;
    });
    let result = tokio::io::copy(&mut from_guest, &mut stdout).await;
    input.abort();
    result.context("reading from the debug console")?;
    Ok(())
}
