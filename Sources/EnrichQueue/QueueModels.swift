import EnrichCore

/// One `(OrganizationId, UserId)` pair to enrich.
public struct Pair: Hashable, Sendable, CustomStringConvertible {
    public var organizationId: String
    public var userId: String

    public init(organizationId: String, userId: String) {
        self.organizationId = organizationId
        self.userId = userId
    }

    public var description: String { "(\(organizationId), \(userId))" }
}

/// The state of a queue row.
public enum ItemState: String, Sendable, CaseIterable, Codable {
    case pending, running, done, failed
}

/// A row this worker holds a lease on. `claim` is the fencing token: together with the lease owner it
/// identifies this particular claim, so a write from an older claim of the same row is refused.
public struct LeasedItem: Hashable, Sendable {
    public var id: Int64
    public var pair: Pair
    /// The number of the call this claim is for: calls whose outcome was written before it, plus one.
    public var attempt: Int32
    /// The row's claim counter at this claim (the fence).
    public var claim: Int32
    public var maxAttempts: Int32

    public init(id: Int64, pair: Pair, attempt: Int32, claim: Int32, maxAttempts: Int32) {
        self.id = id
        self.pair = pair
        self.attempt = attempt
        self.claim = claim
        self.maxAttempts = maxAttempts
    }
}

/// What a claim leased, and how many rows it failed instead (taken over too often).
public struct Claimed: Sendable {
    /// The rows now leased to the claimer, by id.
    public var items: [LeasedItem]
    /// Rows the claim marked `failed` instead of handing them out.
    public var failed: Int

    public init(items: [LeasedItem], failed: Int) {
        self.items = items
        self.failed = failed
    }
}

/// A successful call, to be written back.
public struct Completion: Sendable {
    public var item: LeasedItem
    public var context: CommerceContext

    public init(item: LeasedItem, context: CommerceContext) {
        self.item = item
        self.context = context
    }
}

/// A failed call. `retryAfter == nil` means permanent: the row becomes `failed` at once.
/// Otherwise the row returns to `pending` after the delay, unless it has used all its attempts.
public struct Failure: Sendable {
    public var item: LeasedItem
    public var reason: String
    public var retryAfter: Duration?

    public init(item: LeasedItem, reason: String, retryAfter: Duration?) {
        self.item = item
        self.reason = reason
        self.retryAfter = retryAfter
    }

    public static func permanent(_ item: LeasedItem, reason: String) -> Failure {
        Failure(item: item, reason: reason, retryAfter: nil)
    }
}

/// A row handed back to `pending` without spending an attempt (shutdown, a 429 bound), available again
/// after `after`.
public struct Release: Sendable {
    public var item: LeasedItem
    public var after: Duration

    public init(item: LeasedItem, after: Duration) {
        self.item = item
        self.after = after
    }
}

/// Results to write back in one statement (``Queue/writeBack(_:owner:)``).
public struct WriteBackBatch: Sendable {
    public var completions: [Completion]
    public var failures: [Failure]
    public var releases: [Release]

    public init(completions: [Completion] = [], failures: [Failure] = [], releases: [Release] = []) {
        self.completions = completions
        self.failures = failures
        self.releases = releases
    }

    public var count: Int { completions.count + failures.count + releases.count }
    public var isEmpty: Bool { count == 0 }
    /// Every row of the batch.
    public var ids: [Int64] { completions.map(\.item.id) + failures.map(\.item.id) + releases.map(\.item.id) }
}

/// What ``Queue/writeBack(_:owner:)`` did with a batch.
public struct WriteBackOutcome: Sendable, Equatable {
    /// Rows now `done`.
    public var done = 0
    /// Rows now `failed` for good (a permanent failure, or the last attempt).
    public var failedForGood = 0
    /// Rows back to `pending` for a later attempt.
    public var retried = 0
    /// Rows back to `pending` without an attempt spent.
    public var released = 0
    /// Rows not written: this worker no longer holds them (its lease expired and another took them).
    public var staleIDs: [Int64] = []

    public init() {}
}

/// What a batch write did: rows written, and rows refused because this worker no longer holds them.
public struct WriteOutcome: Sendable, Equatable {
    /// Rows whose state this call changed.
    public var written: Int
    /// Of the written rows, those now `failed` for good (only for ``Queue/fail(_:owner:)``).
    public var failedPermanently: Int
    /// Rows not written because their lease was lost (expired and reclaimed, or released).
    public var staleIDs: [Int64]

    public init(written: Int = 0, failedPermanently: Int = 0, staleIDs: [Int64] = []) {
        self.written = written
        self.failedPermanently = failedPermanently
        self.staleIDs = staleIDs
    }
}

/// What an enqueue did.
public struct EnqueueSummary: Sendable, Equatable, Codable {
    /// Pairs read from the source.
    public var read: Int
    /// New rows created.
    public var inserted: Int
    /// Pairs already `done` or `failed` that were put back to `pending` (a re-sync).
    public var requeued: Int
    /// Pairs already `pending` or `running` (or repeated in the input): left alone, not duplicated.
    public var alreadyQueued: Int

    public init(read: Int = 0, inserted: Int = 0, requeued: Int = 0, alreadyQueued: Int = 0) {
        self.read = read
        self.inserted = inserted
        self.requeued = requeued
        self.alreadyQueued = alreadyQueued
    }
}

/// Row counts by state.
public struct QueueCounts: Sendable, Equatable, Codable {
    public var pending: Int64 = 0
    public var running: Int64 = 0
    public var done: Int64 = 0
    public var failed: Int64 = 0

    public init(pending: Int64 = 0, running: Int64 = 0, done: Int64 = 0, failed: Int64 = 0) {
        self.pending = pending
        self.running = running
        self.done = done
        self.failed = failed
    }

    public var total: Int64 { pending + running + done + failed }

    public subscript(state: ItemState) -> Int64 {
        get {
            switch state {
            case .pending: pending
            case .running: running
            case .done: done
            case .failed: failed
            }
        }
        set {
            switch state {
            case .pending: pending = newValue
            case .running: running = newValue
            case .done: done = newValue
            case .failed: failed = newValue
            }
        }
    }
}
