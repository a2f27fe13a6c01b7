import Logging

/// What every part of a running pipeline shares: the store, the accounting sink, the settings, the clock
/// and the run's logger.
struct RunContext<C: Clock>: Sendable where C.Duration == Duration {
    let store: any RunStore
    let accounting: RunAccounting
    let configuration: WorkerConfiguration
    let clock: C
    let logger: Logger
}
