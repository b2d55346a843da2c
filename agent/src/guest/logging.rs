//! Logging: every line goes to a bounded in-memory buffer and to whoever is connected on
//! vsock port protocol::AGENT_LOG_PORT; warnings and errors (everything with agent.log=debug)
//! also go to /dev/console.
use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

/// Lines kept for a log reader that connects late (early boot lines included).
const BUFFERED_LINES: usize = 512;
/// Longer log lines are cut, so the buffer stays within BUFFERED_LINES * MAX_LINE bytes.
const MAX_LINE: usize = 2048;

pub struct LogHub {
    buffer: Mutex<VecDeque<Arc<str>>>,
    tx: broadcast::Sender<Arc<str>>,
}

static HUB: OnceLock<LogHub> = OnceLock::new();

fn hub() -> &'static LogHub {
    HUB.get_or_init(|| LogHub {
        buffer: Mutex::new(VecDeque::with_capacity(64)),
        tx: broadcast::channel(256).0,
    })
}

impl LogHub {
    fn push(&self, line: Arc<str>) {
        let mut b = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() == BUFFERED_LINES {
            b.pop_front();
        }
        b.push_back(line.clone());
        // Sent under the buffer lock so a new reader sees each line exactly once.
        let _ = self.tx.send(line);
    }

    fn subscribe(&self) -> (Vec<Arc<str>>, broadcast::Receiver<Arc<str>>) {
        let b = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        (b.iter().cloned().collect(), self.tx.subscribe())
    }
}

/// tracing writer: one formatted event per write call.
#[derive(Clone, Copy)]
struct HubWriter;

impl Write for HubWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut line = String::from_utf8_lossy(&buf[..buf.len().min(MAX_LINE)]).into_owned();
        if buf.len() > MAX_LINE {
            line.push_str("...\n");
        }
        hub().push(Arc::from(line));
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for HubWriter {
    type Writer = HubWriter;
    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

#[derive(Clone)]
struct ConsoleWriter(Option<Arc<Mutex<std::fs::File>>>);

impl<'a> MakeWriter<'a> for ConsoleWriter {
    type Writer = ConsoleWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(f) = &self.0 {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            let _ = f.write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Installs the global subscriber.
pub fn init(level: tracing::Level, console: bool) {
    let console_level = if level >= tracing::Level::DEBUG {
        level
    } else {
        tracing::Level::WARN
    };
    let console_file = console
        .then(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/console")
                .ok()
        })
        .flatten()
        .map(|f| Arc::new(Mutex::new(f)));
    let console_writer = ConsoleWriter(console_file);
    let hub_layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_target(false)
        .with_writer(HubWriter)
        .with_filter(LevelFilter::from_level(level));
    let console_layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .with_writer(console_writer)
        .with_filter(LevelFilter::from_level(console_level));
    let _ = tracing_subscriber::registry()
        .with(hub_layer)
        .with(console_layer)
        .try_init();
}

/// Serves the log stream on vsock: each connection gets the buffered lines, then live ones.
pub async fn serve(port: u32) -> io::Result<()> {
    let listener = super::host_vsock::HostListener::bind(port)?;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (old, mut rx) = hub().subscribe();
                for line in old {
                    if AsyncWriteExt::write_all(&mut stream, line.as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                loop {
                    match rx.recv().await {
                        Ok(line) => {
                            if AsyncWriteExt::write_all(&mut stream, line.as_bytes())
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let msg = format!("... {n} log lines dropped (reader too slow)\n");
                            if AsyncWriteExt::write_all(&mut stream, msg.as_bytes())
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
    });
    Ok(())
}
