import Foundation

/// Durations as people write and read them: `26h`, `90m`, `45s`, `2d`, `1h30m` or plain seconds.
public enum DurationText {
    /// Parses `text`; nil when it is not a positive duration.
    public static func parse(_ text: String) -> Duration? {
        let trimmed = text.trimmingCharacters(in: .whitespaces).lowercased()
        if let seconds = Double(trimmed) { return seconds > 0 && seconds.isFinite ? .seconds(seconds) : nil }
        var total = 0.0
        var number = ""
        var sawUnit = false
        for character in trimmed {
            if character.isNumber || character == "." {
                number.append(character)
                continue
            }
            let unit: Double
            switch character {
            case "d": unit = 86_400
            case "h": unit = 3_600
            case "m": unit = 60
            case "s": unit = 1
            default: return nil
            }
            guard let value = Double(number) else { return nil }
            total += value * unit
            number = ""
            sawUnit = true
        }
        guard sawUnit, number.isEmpty, total > 0 else { return nil }
        return .seconds(total)
    }

    /// `2d3h`, `3h12m`, `4m05s`, `12s`.
    public static func format(_ seconds: Double) -> String {
        let whole = Int(max(0, seconds).rounded())
        let (days, hours, minutes, secs) = (whole / 86_400, whole % 86_400 / 3_600, whole % 3_600 / 60, whole % 60)
        if days > 0 { return "\(days)d\(hours)h" }
        if hours > 0 { return "\(hours)h\(String(format: "%02d", minutes))m" }
        if minutes > 0 { return "\(minutes)m\(String(format: "%02d", secs))s" }
        return "\(secs)s"
    }

    /// ``format(_:)`` of a `Duration`.
    public static func format(_ duration: Duration) -> String { format(duration.inSeconds) }
}
