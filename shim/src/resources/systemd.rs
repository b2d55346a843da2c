//! The systemd cgroup driver: a `slice:prefix:name` cgroupsPath becomes a transient scope unit
//! that systemd's manager (`org.freedesktop.systemd1`, on the system bus) starts and stops, so
//! systemd, which owns the cgroup tree on such hosts, knows the pod's VM processes are there.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use zbus::zvariant::{OwnedObjectPath, Value};

/// How long systemd may take to run a start or stop job of the scope.
const JOB_TIMEOUT: Duration = Duration::from_secs(30);
/// The slice a systemd cgroupsPath with an empty slice means (as runc reads it).
const DEFAULT_SLICE: &str = "system.slice";
/// systemd's limit on a unit name.
const UNIT_NAME_MAX: usize = 255;
/// The D-Bus error systemd answers for a unit it does not know.
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("connecting to systemd over the system bus: {0}")]
    Connect(zbus::Error),
    #[error("systemd {action} of {unit}: {source}")]
    Call {
        action: &'static str,
        unit: String,
        source: zbus::Error,
    },
    #[error("systemd {action} of {unit} ended with job result {result:?}")]
    JobFailed {
        action: &'static str,
        unit: String,
        result: String,
    },
    #[error("systemd {action} of {unit}: no job result within {JOB_TIMEOUT:?}")]
    JobTimeout { action: &'static str, unit: String },
}

/// The scope a systemd cgroupsPath names: its unit, its slice and its cgroup below each
/// hierarchy's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `<prefix>-<name>.scope` (`<name>.scope` with no prefix).
    pub unit: String,
    /// The parent slice unit (`system.slice` when the path left it empty).
    pub slice: String,
    /// `a.slice/a-b.slice/<unit>`: where systemd makes the scope's cgroup.
    pub cgroup: PathBuf,
}

impl Scope {
    /// The scope of `slice:prefix:name`, or why it is not a valid one.
    pub fn new(slice: &str, prefix: &str, name: &str) -> Result<Self, String> {
        if name.ends_with(".slice") {
            return Err("a slice as the unit name is not supported: name a scope".into());
        }
        let unit = if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        check_unit_name(&unit)?;
        let slice = if slice.is_empty() {
            DEFAULT_SLICE.to_string()
        } else {
            check_unit_name(slice)?;
            slice.to_string()
        };
        let mut cgroup = slice_cgroup(&slice)?;
        cgroup.push(&unit);
        Ok(Scope {
            unit,
            slice,
            cgroup,
        })
    }
}

/// The characters systemd allows in a unit name, and its length limit.
fn check_unit_name(unit: &str) -> Result<(), String> {
    if unit.len() > UNIT_NAME_MAX {
        return Err(format!("unit name {unit:?} is longer than {UNIT_NAME_MAX}"));
    }
    match unit
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":-_.\\@".contains(*c)))
    {
        Some(c) => Err(format!(
            "unit name {unit:?} has {c:?}, which systemd does not allow"
        )),
        None => Ok(()),
    }
}

/// A slice's cgroup below the root: each dash opens a level (`a-b.slice` is
/// `a.slice/a-b.slice`); `-.slice` is the root itself.
fn slice_cgroup(slice: &str) -> Result<PathBuf, String> {
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(format!("slice {slice:?} does not end in .slice"));
    };
    if stem == "-" {
        return Ok(PathBuf::new());
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if part.is_empty() {
            return Err(format!("slice {slice:?} has an empty level"));
        }
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Ok(path)
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, &[(&str, Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;

    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// Asks the manager to send its signals (JobRemoved among them).
    fn subscribe(&self) -> zbus::Result<()>;

    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: zbus::zvariant::ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

/// A connection to systemd's manager.
#[derive(Clone)]
pub struct Systemd {
    manager: ManagerProxy<'static>,
}

impl std::fmt::Debug for Systemd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Systemd")
    }
}

impl Systemd {
    /// The manager on the system bus (`DBUS_SYSTEM_BUS_ADDRESS` when set, as every D-Bus
    /// client reads it).
    pub async fn system() -> Result<Self, SystemdError> {
        let conn = zbus::Connection::system()
            .await
            .map_err(SystemdError::Connect)?;
        Self::on(conn).await
    }

    /// The manager on the bus at `address` (a private bus, in tests).
    pub async fn at(address: &str) -> Result<Self, SystemdError> {
        let conn = zbus::connection::Builder::address(address)
            .map_err(SystemdError::Connect)?
            .build()
            .await
            .map_err(SystemdError::Connect)?;
        Self::on(conn).await
    }

    async fn on(conn: zbus::Connection) -> Result<Self, SystemdError> {
        let manager = ManagerProxy::new(&conn)
            .await
            .map_err(SystemdError::Connect)?;
        Ok(Systemd { manager })
    }

    /// Starts `scope` holding `pid` (systemd refuses a scope without a process), delegated,
    /// with the accounting a pod's limits need, and waits for the job to finish.
    pub async fn start_scope(&self, scope: &Scope, pid: u32) -> Result<(), SystemdError> {
        let description = format!("kata-rs pod VM {}", scope.unit);
        let properties = [
            ("Description", Value::from(description.as_str())),
            ("Slice", Value::from(scope.slice.as_str())),
            ("PIDs", Value::from(vec![pid])),
            // The shim writes the VM's helpers into the scope's cgroup itself.
            ("Delegate", Value::from(true)),
            // Not ordered after anything: the pod starts now, and stops with it.
            ("DefaultDependencies", Value::from(false)),
            ("MemoryAccounting", Value::from(true)),
            ("CPUAccounting", Value::from(true)),
            ("TasksAccounting", Value::from(true)),
        ];
        self.run_job("start", &scope.unit, async {
            self.manager
                .start_transient_unit(&scope.unit, "replace", &properties, &[])
                .await
        })
        .await
    }

    /// Stops `unit` (systemd kills what is left in it and removes its cgroup) and waits for
    /// the job; Ok(false) when systemd no longer knows the unit (an emptied scope is
    /// collected by itself).
    pub async fn stop_unit(&self, unit: &str) -> Result<bool, SystemdError> {
        let stopped = self
            .run_job("stop", unit, async {
                self.manager.stop_unit(unit, "replace").await
            })
            .await;
        match stopped {
            Err(SystemdError::Call {
                source: zbus::Error::MethodError(name, _, _),
                ..
            }) if name.as_str() == NO_SUCH_UNIT => Ok(false),
            other => other.map(|()| true),
        }
    }

    /// Runs one job call and waits for its JobRemoved signal: the stream is opened before the
    /// call, so a signal that overtakes the reply is not missed.
    async fn run_job(
        &self,
        action: &'static str,
        unit: &str,
        call: impl std::future::Future<Output = zbus::Result<OwnedObjectPath>>,
    ) -> Result<(), SystemdError> {
        let call_err = |source| SystemdError::Call {
            action,
            unit: unit.to_string(),
            source,
        };
        let mut removed = self.manager.receive_job_removed().await.map_err(call_err)?;
        // Already subscribed (by us or another client) is fine; the signals flow either way.
        if let Err(e) = self.manager.subscribe().await {
            tracing::debug!("systemd Subscribe: {e}");
        }
        let job = call.await.map_err(call_err)?;
        let wait = async {
            while let Some(signal) = removed.next().await {
                let Ok(args) = signal.args() else { continue };
                if args.job.as_str() == job.as_str() {
                    return Some(args.result.to_string());
                }
            }
            None
        };
        match tokio::time::timeout(JOB_TIMEOUT, wait).await {
            Ok(Some(result)) if result == "done" => Ok(()),
            Ok(Some(result)) => Err(SystemdError::JobFailed {
                action,
                unit: unit.to_string(),
                result,
            }),
            Ok(None) | Err(_) => Err(SystemdError::JobTimeout {
                action,
                unit: unit.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_lives_in_its_slices_expanded_path() {
        let s = Scope::new("kubepods-burstable-pod1.slice", "cri-containerd", "abc").expect("ok");
        assert_eq!(s.unit, "cri-containerd-abc.scope");
        assert_eq!(s.slice, "kubepods-burstable-pod1.slice");
        assert_eq!(
            s.cgroup,
            PathBuf::from(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/\
                 cri-containerd-abc.scope"
            )
        );
        let root = Scope::new("-.slice", "", "x").expect("root slice");
        assert_eq!(root.cgroup, PathBuf::from("x.scope"));
        let default = Scope::new("", "p", "x").expect("default slice");
        assert_eq!(default.cgroup, PathBuf::from("system.slice/p-x.scope"));
    }

    #[test]
    fn bad_slices_and_names_are_refused_with_the_reason() {
        for (slice, name, why) in [
            ("kubepods", "x", "does not end in .slice"),
            ("a--b.slice", "x", "empty level"),
            ("a.slice", "../x", "does not allow"),
            ("a/b.slice", "x", "does not allow"),
            ("a.slice", "x.slice", "slice as the unit name"),
        ] {
            let e = Scope::new(slice, "p", name).expect_err(slice);
            assert!(e.contains(why), "{slice}:{name}: {e}");
        }
    }
}
