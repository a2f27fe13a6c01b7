extension Duration {
    /// The duration in seconds, as a `Double` (for rates, SQL intervals, messages and metrics).
    public var inSeconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    /// The duration in whole nanoseconds, saturating at the bounds of `Int64` (for NIO's `TimeAmount` and
    /// swift-metrics timers).
    public var inNanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (product, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        let (sum, sumOverflow) = product.addingReportingOverflow(attoseconds / 1_000_000_000)
        return sumOverflow ? (product < 0 ? .min : .max) : sum
    }
}
