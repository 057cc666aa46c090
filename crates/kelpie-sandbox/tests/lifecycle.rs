//! The sandbox lifecycle on the real process backend (bubblewrap, cgroups):
//! transitions and their refusals, many callers at once, pause and resume,
//! exit codes, limits, and that nothing outlives a sandbox.
//!
//! Needs bubblewrap; fails (never skips) without it.

mod support;

use std::sync::Arc;

use kelpie_sandbox::lifecycle::Refused;
use kelpie_sandbox::{
    Backend, DeferredInput, ExecLimits, ExecRequest, Input, KillReason, Sandbox, SandboxError, SandboxSpec,
    SandboxState, SessionPipes, Transition,
};

fn python(code: &str) -> ExecRequest {
    ExecRequest::new("/usr/bin/python3", vec!["-c".into(), code.into()])
}

#[tokio::test]
async fn a_sandbox_goes_through_its_lifecycle_and_refuses_what_its_state_forbids() {
    let (_dir, backend) = support::process_backend();
    let sandbox = Sandbox::new("life", SandboxSpec::default(), backend);
    assert_eq!(sandbox.state(), SandboxState::Stopped);
    let refused = sandbox.exec(python("print(1)")).await.unwrap_err();
    assert_eq!(
        refused,
        SandboxError::Lifecycle(Refused { from: SandboxState::Stopped, transition: Transition::Exec })
    );
    sandbox.create().await.unwrap();
    assert_eq!(sandbox.state(), SandboxState::Running);
    let out = sandbox.exec(python("print(6 * 7)")).await.unwrap();
    assert_eq!((out.exit_code, out.stdout.text()), (0, "42\n".to_string()));
    sandbox.pause().unwrap();
    assert_eq!(sandbox.state(), SandboxState::Paused);
    assert!(matches!(sandbox.exec(python("1")).await, Err(SandboxError::Lifecycle(_))));
    sandbox.resume().unwrap();
    sandbox.stop().await.unwrap();
    assert_eq!(sandbox.state(), SandboxState::Stopped);
    // Stopped, it can be created again, with a fresh working directory.
    sandbox.create().await.unwrap();
    let out = sandbox.exec(python("import os; print(os.listdir('/work'))")).await.unwrap();
    assert_eq!(out.stdout.text(), "[]\n");
    sandbox.destroy().await.unwrap();
    assert_eq!(sandbox.state(), SandboxState::Destroyed);
    let refused = sandbox.create().await.unwrap_err();
    assert_eq!(
        refused,
        SandboxError::Lifecycle(Refused { from: SandboxState::Destroyed, transition: Transition::Create })
    );
    assert!(matches!(sandbox.destroy().await, Err(SandboxError::Lifecycle(_))));
}

#[tokio::test]
async fn many_callers_create_and_destroy_one_sandbox_exactly_once() {
    const CALLERS_COUNT: usize = 16;
    let (dir, backend) = support::process_backend();
    let sandbox = Arc::new(Sandbox::new("race", SandboxSpec::default(), backend));
    let creates: Vec<_> = (0..CALLERS_COUNT)
        .map(|_| {
            let sandbox = Arc::clone(&sandbox);
            tokio::spawn(async move { sandbox.create().await })
        })
        .collect();
    let mut created = 0;
    for create in creates {
        match create.await.unwrap() {
            Ok(()) => created += 1,
            Err(SandboxError::Lifecycle(Refused { transition: Transition::Create, from })) => {
                assert!(matches!(from, SandboxState::Creating | SandboxState::Running), "{from}");
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 1);
    let destroys: Vec<_> = (0..CALLERS_COUNT)
        .map(|_| {
            let sandbox = Arc::clone(&sandbox);
            tokio::spawn(async move { sandbox.destroy().await })
        })
        .collect();
    let mut destroyed = 0;
    for destroy in destroys {
        match destroy.await.unwrap() {
            Ok(()) => destroyed += 1,
            Err(SandboxError::Lifecycle(Refused { transition: Transition::Destroy, .. })) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(destroyed, 1);
    assert_eq!(sandbox.state(), SandboxState::Destroyed);
    support::assert_nothing_left(dir.path(), "race");
}

#[tokio::test]
async fn a_paused_sandbox_runs_nothing_until_resumed() {
    let (dir, backend) = support::process_backend();
    let sandbox = Arc::new(Sandbox::new("pause", SandboxSpec::default(), backend));
    sandbox.create().await.unwrap();
    let ticks = support::sandbox_dir(dir.path(), "pause").join("work/ticks");
    let counter =
        "import time\nfor i in range(400):\n    open('/work/ticks', 'a').write('.')\n    time.sleep(0.01)\n";
    let running = {
        let sandbox = Arc::clone(&sandbox);
        tokio::spawn(async move { sandbox.exec(python(counter)).await })
    };
    support::wait_until(|| std::fs::read(&ticks).is_ok_and(|t| t.len() >= 5)).await;
    sandbox.pause().unwrap();
    let frozen_at = std::fs::read(&ticks).unwrap().len();
    // A window in which a running counter would add about 30 ticks.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(std::fs::read(&ticks).unwrap().len(), frozen_at, "a paused program went on");
    sandbox.resume().unwrap();
    support::wait_until(|| std::fs::read(&ticks).is_ok_and(|t| t.len() > frozen_at)).await;
    sandbox.destroy().await.unwrap();
    let ended = running.await.unwrap().unwrap();
    assert_eq!(ended.killed, Some(KillReason::Interrupted));
    support::assert_nothing_left(dir.path(), "pause");
}

#[tokio::test]
async fn exit_codes_signals_and_limits_are_reported() {
    let (dir, backend) = support::process_backend();
    let sandbox = Sandbox::new("codes", SandboxSpec::default(), backend);
    sandbox.create().await.unwrap();
    let out = sandbox.exec(python("import sys; sys.exit(3)")).await.unwrap();
    assert_eq!((out.exit_code, out.killed), (3, None));
    let out = sandbox.exec(python("import os, signal; os.kill(os.getpid(), signal.SIGTERM)")).await.unwrap();
    assert_eq!(out.exit_code, 128 + 15, "killed by signal 15");
    let mut slow = python("import time; time.sleep(60)");
    slow.limits = ExecLimits { wall_ms: 500, ..ExecLimits::default() };
    let out = sandbox.exec(slow).await.unwrap();
    assert_eq!(out.killed, Some(KillReason::WallTimeout));
    let mut hungry = python("b = bytearray(256 * 1024 * 1024); print(len(b))");
    hungry.limits = ExecLimits { memory_bytes: 64 * 1024 * 1024, ..ExecLimits::default() };
    let out = sandbox.exec(hungry).await.unwrap();
    assert_eq!(out.killed, Some(KillReason::MemoryLimit), "{}", out.stderr.text());
    let mut big_file = python("open('/work/f', 'wb').write(b'x' * 2_000_000)");
    big_file.limits = ExecLimits { file_size_bytes: 1024 * 1024, ..ExecLimits::default() };
    let out = sandbox.exec(big_file).await.unwrap();
    // Python ignores SIGXFSZ, so the write past the limit fails instead.
    assert_eq!(out.exit_code, 1);
    assert!(out.stderr.text().contains("File too large"), "{}", out.stderr.text());
    let mut loud = python("import sys; sys.stdout.write('y' * 3_000_000); print('end', file=sys.stderr)");
    loud.limits = ExecLimits { output_bytes: 4096, ..ExecLimits::default() };
    let out = sandbox.exec(loud).await.unwrap();
    assert_eq!((out.stdout.bytes.len(), out.stdout.dropped_bytes), (4096, 3_000_000 - 4096));
    assert_eq!((out.exit_code, out.stderr.text()), (0, "end\n".to_string()));
    let bad = ExecRequest { limits: ExecLimits { wall_ms: 1, ..ExecLimits::default() }, ..python("1") };
    assert!(matches!(sandbox.exec(bad).await, Err(SandboxError::InvalidLimit { name: "wall_ms", .. })));
    sandbox.destroy().await.unwrap();
    support::assert_nothing_left(dir.path(), "codes");
    support::assert_no_zombies().await;
}

#[tokio::test]
async fn a_dropped_call_and_a_dropped_sandbox_leave_nothing_behind() {
    let (dir, backend) = support::process_backend();
    let sandbox = Sandbox::new("dropped", SandboxSpec::default(), Arc::clone(&backend) as Arc<dyn Backend>);
    sandbox.create().await.unwrap();
    let marker = "kelpie-dropped-call-marker";
    let call = sandbox.exec(python(&format!("import time # {marker}\ntime.sleep(60)")));
    // The caller gives up (a client went away) while the program runs.
    assert!(tokio::time::timeout(std::time::Duration::from_millis(500), call).await.is_err());
    support::wait_until(|| !support::process_with(marker)).await;
    // Dropped while running, the sandbox removes everything it made.
    let running = async { sandbox.exec(python(&format!("import time # {marker}\ntime.sleep(60)"))).await };
    assert!(tokio::time::timeout(std::time::Duration::from_millis(500), running).await.is_err());
    drop(sandbox);
    support::wait_until(|| !support::process_with(marker)).await;
    support::assert_nothing_left(dir.path(), "dropped");
    support::assert_no_zombies().await;
}

#[tokio::test]
async fn a_program_waits_for_deferred_input_and_its_wall_time_starts_when_it_arrives() {
    let (dir, backend) = support::process_backend();
    let sandbox = Sandbox::new("deferred", SandboxSpec::default(), backend);
    sandbox.create().await.unwrap();
    let echo = || {
        let mut request = python("import sys; print(sys.stdin.read().upper())");
        request.limits = ExecLimits { wall_ms: 300, ..ExecLimits::default() };
        request
    };
    // Idle for longer than its wall time before the input comes: not killed.
    let (input, sender) = DeferredInput::channel();
    let waiting = sandbox.exec(ExecRequest { stdin: Input::Later(input), ..echo() });
    let deliver = async {
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        sender.send(b"late".to_vec()).unwrap();
    };
    let (out, ()) = tokio::join!(waiting, deliver);
    let out = out.unwrap();
    assert_eq!((out.exit_code, out.killed, out.stdout.text()), (0, None, "LATE\n".to_string()));
    // Input that will never come: the program is interrupted, not left waiting.
    let (input, sender) = DeferredInput::channel();
    let abandoned = sandbox.exec(ExecRequest { stdin: Input::Later(input), ..echo() });
    let give_up = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        drop(sender);
    };
    let (out, ()) = tokio::join!(abandoned, give_up);
    assert_eq!(out.unwrap().killed, Some(KillReason::Interrupted));
    // Input over the stdin limit is refused like immediate input would be.
    let (input, sender) = DeferredInput::channel();
    sender.send(vec![b'x'; kelpie_sandbox::limits::EXEC_STDIN_BYTES_MAX as usize + 1]).unwrap();
    let out = sandbox.exec(ExecRequest { stdin: Input::Later(input), ..echo() }).await.unwrap();
    assert_eq!(out.killed, Some(KillReason::Interrupted));
    sandbox.destroy().await.unwrap();
    support::assert_nothing_left(dir.path(), "deferred");
    support::assert_no_zombies().await;
}

#[tokio::test]
async fn a_session_talks_with_a_program_line_by_line_until_its_input_ends() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (dir, backend) = support::process_backend();
    let sandbox = Arc::new(Sandbox::new("session", SandboxSpec::default(), backend));
    sandbox.create().await.unwrap();
    let (mut to_program, program_stdin) = tokio::io::duplex(4096);
    let (program_stdout, from_program) = tokio::io::duplex(4096);
    let pipes = SessionPipes::new(Box::new(program_stdin), Box::new(program_stdout));
    // Answers each line as it comes: a conversation, not one input.
    let request = ExecRequest {
        stdin: Input::Session(pipes.clone()),
        ..python("import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)\nprint('bye', file=sys.stderr)")
    };
    let running = {
        let sandbox = Arc::clone(&sandbox);
        tokio::spawn(async move { sandbox.exec(request).await })
    };
    let mut lines = BufReader::new(from_program).lines();
    for word in ["kelp", "otter", "urchin"] {
        to_program.write_all(format!("{word}\n").as_bytes()).await.unwrap();
        assert_eq!(lines.next_line().await.unwrap(), Some(word.to_uppercase()));
    }
    drop(to_program);
    let out = running.await.unwrap().unwrap();
    assert_eq!((out.exit_code, out.killed), (0, None));
    assert_eq!((out.stdout.text(), out.stderr.text()), (String::new(), "bye\n".to_string()));
    assert_eq!(lines.next_line().await.unwrap(), None, "the program's stdout ended with it");
    // The pipes serve one execution only.
    let again = sandbox.exec(ExecRequest { stdin: Input::Session(pipes), ..python("1") }).await;
    assert!(matches!(again, Err(SandboxError::InvalidRequest(reason)) if reason.contains("one execution")));
    sandbox.destroy().await.unwrap();
    support::assert_nothing_left(dir.path(), "session");
    support::assert_no_zombies().await;
}
