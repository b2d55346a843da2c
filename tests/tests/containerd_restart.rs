//! containerd restarted under running sandboxes (1.6 and 2.x): the VMs keep running; after
//! the restart the task is still RUNNING, exec works, `ctr task attach` gets its output again,
//! a container that exited while containerd was down is reported with its own exit code, an
//! exit after the restart is published exactly once, and nothing is left after delete. Through
//! the CRI, a container's log file keeps receiving its output after the restart.

use std::path::Path;
use std::time::{Duration, Instant};

use kata_e2e::cri;
use kata_e2e::*;

const STATUS_TIMEOUT: Duration = Duration::from_secs(60);
const CLEAN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `ctr task attach` listens before it is stopped (its output is what it saw).
const ATTACH_FOR: Duration = Duration::from_secs(4);
/// A container printing `tick N` twice a second.
const TICKER: &str = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.5; done";

/// The highest N of the `tick N` lines in `text`.
fn last_tick(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.split("tick ").nth(1))
        .filter_map(|n| n.trim().parse().ok())
        .max()
}

/// What `ctr task attach` prints within [`ATTACH_FOR`].
fn attach(ctrd: &Containerd, id: &str) -> String {
    let out = ctrd.ctr_bounded(&["task", "attach", id], ATTACH_FOR);
    text(&out.stdout)
}

/// Waits (bounded) for `path` to exist.
fn wait_file(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tasks_survive_a_restart(ctrd: &Containerd) {
    let ticker = unique_id("ticker");
    let _guard_ticker = ctrd.guard(&ticker);
    ctrd.run_detached(&ticker, &["sh", "-c", TICKER]);
    let before = attach(ctrd, &ticker);
    assert!(
        last_tick(&before).is_some(),
        "attach before the restart: {before:?}"
    );

    // A second container exits (code 7) while containerd is down, once told to through a
    // host directory, and says so there first.
    let quitter = unique_id("quitter");
    let _guard_quitter = ctrd.guard(&quitter);
    let dir = ctrd.dir().join("restart").join(&quitter);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mount = format!("type=bind,src={},dst=/x,options=rbind:rw", dir.display());
    ctrd.run_detached_with_flags(
        &quitter,
        &["--mount", &mount],
        &[
            "sh",
            "-c",
            "while [ ! -e /x/go ]; do sleep 0.2; done; touch /x/done; exit 7",
        ],
        STATUS_TIMEOUT,
    );

    ctrd.restart(|| {
        std::fs::write(dir.join("go"), "").expect("touch go");
        wait_file(&dir.join("done"), STATUS_TIMEOUT);
    });

    assert_eq!(ctrd.task_status(&ticker).as_deref(), Some("RUNNING"));
    ctrd.wait_exec_ok(&ticker, &["true"], STATUS_TIMEOUT);
    let after = attach(ctrd, &ticker);
    assert!(
        last_tick(&after) > last_tick(&before),
        "attach after the restart gets new output: {after:?} (before: {before:?})"
    );
    ctrd.wait_status(&quitter, "STOPPED", STATUS_TIMEOUT);
    assert_eq!(
        ctrd.delete_task(&quitter),
        7,
        "the exit that happened while containerd was down"
    );

    // An exit after the restart: one /tasks/exit event for the task's init, no more.
    let events = ctrd.events();
    let kill = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", &ticker]);
    assert!(kill.status.success(), "kill: {}", text(&kill.stderr));
    ctrd.wait_status(&ticker, "STOPPED", STATUS_TIMEOUT);
    assert_eq!(ctrd.delete_task(&ticker), 137);
    let seen = events.stop();
    let exits = seen
        .lines()
        .filter(|l| l.contains("/tasks/exit") && l.contains(&ticker))
        .count();
    assert_eq!(exits, 1, "exit events for {ticker}:\n{seen}");
    for id in [&ticker, &quitter] {
        let left = wait_clean(id, CLEAN_TIMEOUT);
        assert!(
            left.is_empty(),
            "{id} left things behind: {left:#?}\ncontainerd log:\n{}",
            ctrd.log_tail(30)
        );
    }
}

fn cri_log_continues_after_a_restart(ctrd: &Containerd) {
    let log_dir = ctrd.dir().join("pods").join(unique_id("restart"));
    std::fs::create_dir_all(&log_dir).expect("log dir");
    let config = cri::pod_config("restart", &log_dir, &[]);
    let cri = ctrd.cri();
    let pod = cri
        .run_pod(&config, "kata")
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_tail(40)));
    let guard = cri.guard(&pod);
    let c = cri::container_config("ticker", &["sh", "-c", TICKER]);
    let log = cri::log_path(&config, &c);
    cri.create_container(&pod, &c, &config)
        .and_then(|id| cri.start_container(&id))
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctrd.log_tail(40)));
    let ticks = |timeout: Duration, above: Option<u64>| {
        let deadline = Instant::now() + timeout;
        loop {
            let now = last_tick(&std::fs::read_to_string(&log).unwrap_or_default());
            if now.is_some() && now > above {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "{} has no tick above {above:?} within {timeout:?}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    ticks(STATUS_TIMEOUT, None);
    let mut while_down = None;
    // Nothing writes the log while containerd is down: what it holds then is the mark.
    ctrd.restart(|| {
        while_down = last_tick(&std::fs::read_to_string(&log).unwrap_or_default());
    });
    let later = ticks(STATUS_TIMEOUT, while_down);
    println!("log: tick {while_down:?} while containerd was down, {later:?} after");
    // The old client's connection ended with the old containerd: a fresh one removes the
    // pod, and the old guard is let go without its own (failing) attempt.
    std::mem::forget(guard);
    ctrd.cri().guard(&pod).remove_leaving_nothing(CLEAN_TIMEOUT);
    let _ = std::fs::remove_dir_all(&log_dir);
}

#[test]
fn containerd1_restart_keeps_tasks_attach_exits_and_clean_up() {
    tasks_survive_a_restart(&Containerd::start("restart"));
}

#[test]
fn containerd2_restart_keeps_tasks_attach_exits_and_clean_up() {
    tasks_survive_a_restart(&Containerd::start_v2("restart2"));
}

#[test]
fn containerd1_restart_keeps_a_cri_containers_log_flowing() {
    cri_log_continues_after_a_restart(&Containerd::start_cri("restart-cri"));
}

#[test]
fn containerd2_restart_keeps_a_cri_containers_log_flowing() {
    cri_log_continues_after_a_restart(&Containerd::start_cri_v2("restart-cri2"));
}
