//! What one execution in a sandbox may use, each limit a named constant
//! with its unit: the default a tool call gets, and the largest a caller may
//! ask for. A value outside its range is bad input ([`ExecLimits::check`]).

use crate::error::SandboxError;

pub const KIB_BYTES: u64 = 1024;
pub const MIB_BYTES: u64 = 1024 * KIB_BYTES;

/// Wall time of one execution.
pub const EXEC_WALL_MS_DEFAULT: u64 = 30_000;
pub const EXEC_WALL_MS_MIN: u64 = 100;
pub const EXEC_WALL_MS_MAX: u64 = 600_000;
/// CPU time of each process of an execution (RLIMIT_CPU, whole seconds).
pub const EXEC_CPU_MS_DEFAULT: u64 = 30_000;
pub const EXEC_CPU_MS_MIN: u64 = 1_000;
pub const EXEC_CPU_MS_MAX: u64 = 600_000;
/// Memory of the whole execution (its cgroup), or of each process
/// (RLIMIT_AS) where no memory cgroup is available.
pub const EXEC_MEMORY_BYTES_DEFAULT: u64 = 512 * MIB_BYTES;
pub const EXEC_MEMORY_BYTES_MIN: u64 = 32 * MIB_BYTES;
pub const EXEC_MEMORY_BYTES_MAX: u64 = 8 * 1024 * MIB_BYTES;
/// Processes and threads at once in the execution.
pub const EXEC_PROCESSES_COUNT_DEFAULT: u64 = 64;
pub const EXEC_PROCESSES_COUNT_MIN: u64 = 4;
pub const EXEC_PROCESSES_COUNT_MAX: u64 = 4_096;
/// Bytes kept of stdout, and of stderr; more is read and dropped.
pub const EXEC_OUTPUT_BYTES_DEFAULT: u64 = MIB_BYTES;
pub const EXEC_OUTPUT_BYTES_MIN: u64 = KIB_BYTES;
pub const EXEC_OUTPUT_BYTES_MAX: u64 = 64 * MIB_BYTES;
/// Largest file a process may write (RLIMIT_FSIZE).
pub const EXEC_FILE_SIZE_BYTES_DEFAULT: u64 = 64 * MIB_BYTES;
pub const EXEC_FILE_SIZE_BYTES_MIN: u64 = KIB_BYTES;
pub const EXEC_FILE_SIZE_BYTES_MAX: u64 = 4 * 1024 * MIB_BYTES;
/// Largest result an execution may send on its result channel.
pub const EXEC_RESULT_BYTES_MAX: u64 = 16 * MIB_BYTES;
/// Largest input written to an execution's stdin.
pub const EXEC_STDIN_BYTES_MAX: u64 = 16 * MIB_BYTES;
/// Size of the private `/tmp` of a sandbox (a tmpfs, charged to its memory).
pub const SANDBOX_TMP_SIZE_BYTES: u64 = 64 * MIB_BYTES;

/// The limits of one execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecLimits {
    pub wall_ms: u64,
    pub cpu_ms: u64,
    pub memory_bytes: u64,
    pub processes_count: u64,
    pub output_bytes: u64,
    pub file_size_bytes: u64,
}

impl Default for ExecLimits {
    fn default() -> Self {
        ExecLimits {
            wall_ms: EXEC_WALL_MS_DEFAULT,
            cpu_ms: EXEC_CPU_MS_DEFAULT,
            memory_bytes: EXEC_MEMORY_BYTES_DEFAULT,
            processes_count: EXEC_PROCESSES_COUNT_DEFAULT,
            output_bytes: EXEC_OUTPUT_BYTES_DEFAULT,
            file_size_bytes: EXEC_FILE_SIZE_BYTES_DEFAULT,
        }
    }
}

impl ExecLimits {
    /// Every limit within its range, or the first that is not.
    pub fn check(&self) -> Result<(), SandboxError> {
        let ranges = [
            ("wall_ms", self.wall_ms, EXEC_WALL_MS_MIN, EXEC_WALL_MS_MAX),
            ("cpu_ms", self.cpu_ms, EXEC_CPU_MS_MIN, EXEC_CPU_MS_MAX),
            ("memory_bytes", self.memory_bytes, EXEC_MEMORY_BYTES_MIN, EXEC_MEMORY_BYTES_MAX),
            ("processes_count", self.processes_count, EXEC_PROCESSES_COUNT_MIN, EXEC_PROCESSES_COUNT_MAX),
            ("output_bytes", self.output_bytes, EXEC_OUTPUT_BYTES_MIN, EXEC_OUTPUT_BYTES_MAX),
            ("file_size_bytes", self.file_size_bytes, EXEC_FILE_SIZE_BYTES_MIN, EXEC_FILE_SIZE_BYTES_MAX),
        ];
        for (name, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(SandboxError::InvalidLimit { name, value, min, max });
            }
        }
        Ok(())
    }

    /// RLIMIT_CPU in whole seconds, rounded up.
    pub fn cpu_seconds(&self) -> u64 {
        self.cpu_ms.div_ceil(1_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_within_range_and_each_bound_is_checked() {
        assert_eq!(ExecLimits::default().check(), Ok(()));
        let over = ExecLimits { memory_bytes: EXEC_MEMORY_BYTES_MAX + 1, ..ExecLimits::default() };
        assert_eq!(
            over.check(),
            Err(SandboxError::InvalidLimit {
                name: "memory_bytes",
                value: EXEC_MEMORY_BYTES_MAX + 1,
                min: EXEC_MEMORY_BYTES_MIN,
                max: EXEC_MEMORY_BYTES_MAX
            })
        );
        let under = ExecLimits { wall_ms: EXEC_WALL_MS_MIN - 1, ..ExecLimits::default() };
        assert!(matches!(under.check(), Err(SandboxError::InvalidLimit { name: "wall_ms", .. })));
        assert_eq!(ExecLimits { cpu_ms: 1_001, ..ExecLimits::default() }.cpu_seconds(), 2);
    }
}
