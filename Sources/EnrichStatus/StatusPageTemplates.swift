import Mustache

/// The status page's Mustache templates. `{{name}}` is HTML-escaped by the engine; the one unescaped
/// insertion (`{{{throughput}}}`, `{{{throttled}}}`) is SVG rendered from the `chart` template, whose values
/// are escaped in turn.
enum StatusPageTemplates {
    static let library: MustacheLibrary = {
        var library = MustacheLibrary()
        // The templates are constants of this file: a failure to parse them is a programming error.
        library.register(try! MustacheTemplate(string: page), named: "page")
        library.register(try! MustacheTemplate(string: chart), named: "chart")
        return library
    }()

    /// `chart` as SVG markup.
    static func chart(_ chart: LineChart) -> String {
        library.render(chart.context, withTemplate: "chart") ?? ""
    }

    static let chart = """
        <svg viewBox="0 0 {{width}} {{height}}" role="img" aria-label="{{unit}} over time" class="chart">
        {{#yTicks}}<line x1="{{left}}" x2="{{right}}" y1="{{y}}" y2="{{y}}" class="grid"/><text x="{{left}}" y="{{y}}" dx="-6" dy="4" text-anchor="end">{{label}}</text>
        {{/yTicks}}{{#xTicks}}<text x="{{x}}" y="{{bottom}}" dy="16" text-anchor="middle">{{label}}</text>
        {{/xTicks}}<text x="{{left}}" y="{{top}}" dx="4" dy="2" class="unit">{{unit}}</text>
        {{#lines}}<polyline points="{{points}}" fill="none" stroke="{{color}}" stroke-width="2"><title>{{label}}</title></polyline>
        {{/lines}}{{#legend}}<rect x="{{x}}" y="{{top}}" dy="20" width="10" height="10" fill="{{color}}" transform="translate(60,0)"/><text x="{{x}}" y="{{top}}" dx="74" dy="9">{{label}}</text>
        {{/legend}}{{#empty}}<text x="50%" y="50%" text-anchor="middle" class="unit">no samples yet: runs record one per heartbeat</text>{{/empty}}
        </svg>
        """

    static let page = """
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta http-equiv="refresh" content="{{refresh}}">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>enrich · {{schema}}</title>
        <style>
        body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #111827; background: #f9fafb; }
        header { background: #111827; color: #f9fafb; padding: 12px 24px; display: flex; gap: 24px; align-items: baseline; }
        header h1 { font-size: 18px; margin: 0; }
        main { padding: 16px 24px; max-width: 1280px; }
        h2 { font-size: 15px; margin: 24px 0 8px; }
        .cards { display: flex; gap: 12px; flex-wrap: wrap; }
        .card { background: #fff; border: 1px solid #e5e7eb; border-radius: 6px; padding: 10px 16px; min-width: 110px; }
        .card .n { font-size: 22px; font-weight: 600; }
        .card.failed .n { color: #b91c1c; }
        .charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 12px; }
        .chart { background: #fff; border: 1px solid #e5e7eb; border-radius: 6px; width: 100%; height: auto; }
        .chart text { font-size: 11px; fill: #4b5563; }
        .chart .grid { stroke: #e5e7eb; }
        table { border-collapse: collapse; background: #fff; width: 100%; }
        th, td { border-bottom: 1px solid #e5e7eb; padding: 5px 8px; text-align: left; vertical-align: top; }
        th { background: #f3f4f6; font-weight: 600; }
        td.num { text-align: right; font-variant-numeric: tabular-nums; }
        .state-running { color: #1d4ed8; } .state-succeeded { color: #15803d; }
        .state-failed, .state-abandoned, .state-interrupted { color: #b91c1c; }
        .error { color: #7f1d1d; font-family: ui-monospace, monospace; font-size: 12px; max-width: 420px; word-break: break-word; }
        progress { width: 90px; }
        ul.fleet { background: #fff; border: 1px solid #e5e7eb; border-radius: 6px; padding: 8px 28px; font-family: ui-monospace, monospace; font-size: 12px; }
        footer { color: #6b7280; padding: 16px 24px; }
        </style>
        </head>
        <body>
        <header><h1>enrich</h1><span>schema {{schema}}</span><span>{{generatedAt}}</span><span>refreshes every {{refresh}} s</span></header>
        <main>
        <h2>Queue ({{total}} rows)</h2>
        <div class="cards">{{#states}}<div class="card {{state}}"><div class="n">{{count}}</div><div>{{state}}</div></div>{{/states}}</div>
        <h2>Throughput and 429s over the last runs</h2>
        <div class="charts">{{{throughput}}}{{{throttled}}}</div>
        {{#fleet}}<h2>Fleet</h2>
        <ul class="fleet">{{#lines}}<li>{{.}}</li>{{/lines}}</ul>{{/fleet}}
        <h2>Runs</h2>
        {{#hasRuns}}<table>
        <tr><th>run</th><th>job</th><th>trigger</th><th>state</th><th>started (UTC)</th><th>progress</th><th>rows/s</th><th>ETA</th><th>failed</th><th>429s</th><th>logins</th><th>host:pid</th><th>last error</th></tr>
        {{#runs}}<tr><td class="num">{{id}}</td><td>{{job}}</td><td>{{trigger}}</td><td class="state-{{stateClass}}">{{state}}</td><td>{{started}}</td>
        <td>{{#hasPercent}}<progress value="{{percent}}" max="100"></progress> {{percent}}% {{/hasPercent}}{{processed}}/{{total}}</td>
        <td class="num">{{rate}}</td><td>{{eta}}</td><td class="num">{{failed}}</td><td class="num">{{throttled}}</td><td class="num">{{logins}}</td><td>{{host}}</td><td class="error">{{lastError}}</td></tr>
        {{/runs}}</table>{{/hasRuns}}{{^hasRuns}}<p>No job runs yet.</p>{{/hasRuns}}
        <h2>Failures by reason ({{failedTotal}} rows)</h2>
        {{#hasFailures}}<table>
        <tr><th>rows</th><th>reason</th><th>first seen</th><th>last seen</th><th>examples</th></tr>
        {{#failureGroups}}<tr><td class="num">{{count}}</td><td class="error">{{reason}}</td><td>{{first}}</td><td>{{last}}</td><td>{{examples}}</td></tr>
        {{/failureGroups}}</table>
        <p>Requeue a group with <code>enrich requeue --reason "…"</code> (see <code>enrich failures</code>).</p>{{/hasFailures}}{{^hasFailures}}<p>No failed rows.</p>{{/hasFailures}}
        </main>
        <footer>read-only · enrich status page</footer>
        </body>
        </html>
        """
}
