import Foundation
import Testing

/// The test clock itself: given a `parked` condition, ``ManualClock/drive(until:parked:)`` must not move time
/// under a task that was woken but has not run yet, or a test measures that task late on a loaded machine.
@Suite("Manual clock", .timeLimit(.minutes(1)))
struct ManualClockTests {
    @Test("drive with a parked condition waits for a woken task whose thread stalls longer than the settling time")
    func driveWaitsForParked() async {
        let clock = ManualClock()
        let finished = Locked(0)
        let readings = Locked<[Duration]>([])
        await withTaskGroup(of: Void.self) { group in
            // Woken at 1 s, this task's thread stalls for 30 ms (a preempted thread on a loaded machine) before it
            // reads the time: six times the settling time, so a guess from quiet yields alone moves time to 2 s.
            group.addTask {
                try? await clock.sleep(until: .init(offset: .seconds(1)), tolerance: nil)
                usleep(30_000)
                readings.withLock { $0.append(clock.now.offset) }
                finished.withLock { $0 += 1 }
            }
            group.addTask {
                try? await clock.sleep(until: .init(offset: .seconds(2)), tolerance: nil)
                readings.withLock { $0.append(clock.now.offset) }
                finished.withLock { $0 += 1 }
            }
            await clock.drive(until: { finished.withLock { $0 } == 2 }) {
                finished.withLock { $0 } + clock.sleeperCount == 2
            }
        }
        #expect(readings.withLock { $0 } == [.seconds(1), .seconds(2)])
    }
}
