// swift-tools-version:6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "enrich",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "enrich", targets: ["enrich"])
    ],
    dependencies: [
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/hummingbird-project/swift-mustache", from: "2.1.1"),
        // Tests only: parses docker-compose.yml.
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // The command-line entry point: a thin shell over EnrichCLI.
        .executableTarget(name: "enrich", dependencies: ["EnrichCLI"], swiftSettings: swiftSettings),
        // Subcommands (migrate, enqueue, status, run, simulate); logic lives in the libraries below.
        .target(
            name: "EnrichCLI",
            dependencies: [
                "EnrichCore", "EnrichQueue", "NymbleAPI", "EnrichToken", "EnrichThrottle", "EnrichWorker",
                "NymbleSimulator", "EnrichJobs", "EnrichMetrics", "EnrichSettings", "EnrichStatus",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The pipeline: claim rows, call /access from a bounded task group, write results back in batches.
        .target(
            name: "EnrichWorker",
            dependencies: [
                "EnrichCore",
                "EnrichQueue", "NymbleAPI", "EnrichToken", "EnrichThrottle",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Every setting described once (flag, environment variable, job-file key, default, range, help), and
        // the typed configurations read from flags > environment > job file > defaults.
        .target(
            name: "EnrichSettings",
            dependencies: [
                "EnrichCore", "EnrichQueue", "EnrichWorker", "EnrichThrottle", "NymbleAPI", "NymbleSimulator",
            ],
            swiftSettings: swiftSettings
        ),
        // What every module shares: Duration units, human durations, the commerce context of a pair.
        .target(name: "EnrichCore", swiftSettings: swiftSettings),
        // Jobs: definitions (jobs/*.json), pair sources (CSV), the run plan and runner (lock, enqueue, drain,
        // record), and the health verdict of `status --check`.
        .target(
            name: "EnrichJobs",
            dependencies: [
                "EnrichCore", "EnrichQueue", "EnrichSettings", "EnrichWorker", "EnrichToken", "NymbleAPI",
                "EnrichMetrics", "EnrichFleet", "EnrichStatus",
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // What the workers of a schema share through PostgreSQL: one sealed token, one send budget.
        .target(
            name: "EnrichFleet",
            dependencies: [
                "EnrichCore", "EnrichQueue", "EnrichToken", "EnrichThrottle", "NymbleAPI",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // What `enrich status` and the status page show (`enrich dashboard`, `run --metrics-port`): the
        // report read from PostgreSQL, and its HTML page with server-drawn SVG charts (Mustache templates).
        .target(
            name: "EnrichStatus",
            dependencies: [
                "EnrichCore", "EnrichQueue",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Mustache", package: "swift-mustache"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The Prometheus endpoint of `enrich run --metrics-port`.
        .target(
            name: "EnrichMetrics",
            dependencies: [
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // PostgreSQL: connection config, migrations, the queue table and the job runs table.
        .target(
            name: "EnrichQueue",
            dependencies: [
                "EnrichCore",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The Nymble Commerce API client: wire models, typed errors, Retry-After parsing, the lean HTTP/1.1
        // client of the hot path.
        .target(
            name: "NymbleAPI",
            dependencies: [
                "EnrichCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The one shared login token: single-flight login, refresh-ahead, login pacing.
        .target(
            name: "EnrichToken",
            dependencies: [
                "EnrichCore", "NymbleAPI", "EnrichThrottle", .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Rate control: the adaptive (AIMD) throttle for 429s and retry backoff with full jitter.
        .target(
            name: "EnrichThrottle",
            dependencies: ["EnrichCore", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        // A faithful simulator of the Nymble API (Hummingbird), used by tests, the demo and benchmarks.
        .target(
            name: "NymbleSimulator",
            dependencies: [
                "EnrichCore",
                "NymbleAPI",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Pure logic, no I/O: injected clocks, no database, no network.
        .testTarget(
            name: "EnrichUnitTests",
            dependencies: [
                "EnrichCore", "EnrichQueue", "NymbleAPI", "EnrichToken", "EnrichThrottle", "EnrichWorker", "EnrichCLI",
                "EnrichJobs", "EnrichSettings", "EnrichFleet", "EnrichStatus",
                .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Real PostgreSQL and the simulator over loopback HTTP.
        .testTarget(
            name: "EnrichIntegrationTests",
            dependencies: [
                "EnrichCore", "EnrichQueue", "NymbleAPI", "EnrichToken", "EnrichThrottle", "EnrichWorker",
                "NymbleSimulator", "EnrichCLI", "EnrichJobs", "EnrichMetrics", "EnrichSettings", "EnrichFleet",
                "EnrichStatus",
                .product(name: "Yams", package: "Yams"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
