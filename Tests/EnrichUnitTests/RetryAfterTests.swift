import Foundation
import NymbleAPI
import Testing

@Suite("Retry-After parsing")
struct RetryAfterTests {
    let now = Date(timeIntervalSince1970: 1_795_000_000)

    @Test("delta-seconds")
    func seconds() {
        #expect(RetryAfter.parse("7", now: now) == .seconds(7))
        #expect(RetryAfter.parse(" 0 ", now: now) == .zero)
    }

    @Test("an HTTP-date in the future is the time until it; in the past it is zero")
    func httpDate() {
        let future = RetryAfter.format(now.addingTimeInterval(12))
        #expect(RetryAfter.parse(future, now: now) == .seconds(12))
        #expect(RetryAfter.parse(RetryAfter.format(now.addingTimeInterval(-30)), now: now) == .zero)
    }

    @Test("the obsolete RFC 850 and asctime date forms")
    func obsoleteDates() {
        let base = Date(timeIntervalSince1970: 784_111_777)  // Sun, 06 Nov 1994 08:49:37 GMT
        #expect(RetryAfter.parse("Sunday, 06-Nov-94 08:49:37 GMT", now: base) == .zero)
        #expect(RetryAfter.parse("Sun Nov  6 08:49:47 1994", now: base) == .seconds(10))
    }

    @Test("garbage, negative numbers and absence are nil", arguments: [nil, "", "soon", "-5", "1.5", "Tue, 99 Nov"])
    func unusable(header: String?) {
        #expect(RetryAfter.parse(header, now: now) == nil)
    }
}
