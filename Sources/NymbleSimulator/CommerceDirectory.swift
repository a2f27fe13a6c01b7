/// The simulator's made-up but deterministic commerce data: the same pair always gets the same answer, so
/// tests can compare every written-back row with ``context(organizationId:userId:)``.
public enum CommerceDirectory {
    /// The answer for a well-formed pair.
    ///
    /// About 10% of users have no customer association (all three fields null), about 10% have a customer
    /// without a price tier, the rest have all three.
    public static func context(
        organizationId: String,
        userId: String
    ) -> (
        customerNumber: String?, priceTier: String?, currencyCode: String?
    ) {
        let hash = fnv1a(organizationId, userId)
        switch hash % 10 {
        case 0: return (nil, nil, nil)
        case 1: return (customerNumber(hash), nil, currency(hash))
        default: return (customerNumber(hash), tier(hash), currency(hash))
        }
    }

    /// Whether an id is well formed for the simulator: 1 to 128 characters of `A-Z a-z 0-9 _ - . : @`.
    /// Anything else (spaces, `!`, `/`, non-ASCII, empty) is answered 400.
    public static func isWellFormed(_ id: String) -> Bool {
        guard !id.isEmpty, id.utf8.count <= 128 else { return false }
        return id.utf8.allSatisfy { byte in
            (byte >= 48 && byte <= 57) || (byte >= 65 && byte <= 90) || (byte >= 97 && byte <= 122)
                || byte == 95 || byte == 45 || byte == 46 || byte == 58 || byte == 64
        }
    }

    static let tiers = ["Retail", "Wholesale", "Distributor", "Partner"]
    static let currencies = ["USD", "EUR", "GBP", "CAD", "AUD"]

    private static func customerNumber(_ hash: UInt64) -> String {
        let digits = String((hash >> 20) % 1_000_000)
        return "CN-" + String(repeating: "0", count: 6 - digits.count) + digits
    }
    private static func tier(_ hash: UInt64) -> String { tiers[Int((hash >> 8) % UInt64(tiers.count))] }
    private static func currency(_ hash: UInt64) -> String { currencies[Int((hash >> 12) % UInt64(currencies.count))] }

    static func fnv1a(_ organizationId: String, _ userId: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in organizationId.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        hash = (hash ^ 0x1f) &* 0x100_0000_01b3
        for byte in userId.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return hash
    }
}
