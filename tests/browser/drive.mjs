// analytics.js (@segment/analytics-next, its UMD bundle from npm) in headless Chromium against a
// collector, as a site installs it: `AnalyticsBrowser.load({ writeKey, cdnURL })` with only
// cdnURL pointing at the collector. Driven by services/collector/tests/browser.rs.
//
// usage: node drive.mjs COLLECTOR_URL WRITE_KEY WRONG_WRITE_KEY RUN_ID [--snippet]
//
// Serves a page from its own origin (another port than the collector's, so every call is
// cross-origin) and reaches the collector through a slow proxy (below). In one browser context:
// identify, track, page, group and alias, each awaited, and a track whose request is in flight
// when the page navigates away (it must survive the unload). In a fresh context, the wrong write
// key: loading must fail and nothing may be posted. With --snippet (the collector serves
// analytics.js), a third context loads analytics.min.js from the collector with a snippet.
// Prints one JSON report on stdout; the Rust test checks it against the raw topic. Exits 1 on
// any page error or failed delivery it can see.
import http from 'node:http'
import net from 'node:net'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'

const [collector, writeKey, wrongKey, run, snippetArg] = process.argv.slice(2)
const snippet = snippetArg === '--snippet'
if (!run) {
  console.error('usage: node drive.mjs COLLECTOR_URL WRITE_KEY WRONG_WRITE_KEY RUN_ID [--snippet]')
  process.exit(2)
}
const here = path.dirname(fileURLToPath(import.meta.url))
const umd = path.join(here, 'node_modules/@segment/analytics-next/dist/umd')
const executablePath = process.env.CORRAL_CHROMIUM ?? '/usr/bin/chromium'
const LOCALE = 'de-DE'

const page = (title, body) =>
  `<!doctype html><html lang="de"><head><meta charset="utf-8"><title>${title}</title></head><body>${body}</body></html>`
const indexHtml = page(
  'Corral Shop – Warenkorb',
  `<h1>Warenkorb</h1>
<script src="/umd/index.js"></script>
<script>
  const q = new URLSearchParams(location.search)
  window.analytics = AnalyticsNext.AnalyticsBrowser.load({ writeKey: q.get('key'), cdnURL: q.get('cdn') })
  window.loaded = window.analytics.then(() => 'loaded', (e) => 'failed: ' + (e && e.message))
</script>`
)
const byeHtml = page('Bye', '<p>No analytics here.</p>')
// The snippet way: a stub that queues calls, and analytics.min.js loaded from the collector
// (--analytics-js); `_cdn` tells analytics.js where its settings and chunks are (it finds that
// in the script's URL by itself only for https).
const snippetHtml = page(
  'Corral Shop – Snippet',
  `<h1>Snippet</h1>
<script>
  !function () {
    var q = new URLSearchParams(location.search)
    var analytics = (window.analytics = window.analytics || [])
    if (analytics.initialize || analytics.invoked) return
    analytics.invoked = true
    analytics.methods = ['identify', 'track', 'page', 'group', 'alias', 'screen', 'reset', 'ready', 'on', 'once', 'off', 'addSourceMiddleware', 'register', 'setAnonymousId', 'trackLink', 'trackForm', 'debug']
    analytics.factory = function (method) {
      return function () {
        var args = Array.prototype.slice.call(arguments)
        args.unshift(method)
        analytics.push(args)
        return analytics
      }
    }
    for (var i = 0; i < analytics.methods.length; i++) analytics[analytics.methods[i]] = analytics.factory(analytics.methods[i])
    analytics.load = function (key, options) {
      var script = document.createElement('script')
      script.async = true
      script.src = analytics._cdn + '/analytics.js/v1/' + encodeURIComponent(key) + '/analytics.min.js'
      document.head.appendChild(script)
      analytics._writeKey = key
      analytics._loadOptions = options
    }
    analytics._cdn = q.get('cdn')
    analytics.load(q.get('key'))
    analytics.page()
    analytics.identify(q.get('user'), { via: 'snippet' })
    analytics.track('Snippet Loaded', { queued: true })
  }()
</script>`
)

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://page')
  if (url.pathname === '/shop/cart') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(indexHtml)
  } else if (url.pathname === '/shop/snippet') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(snippetHtml)
  } else if (url.pathname === '/bye') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(byeHtml)
  } else if (/^\/umd\/[\w.-]+\.js$/.test(url.pathname)) {
    const file = path.join(umd, path.basename(url.pathname))
    fs.readFile(file, (err, data) => {
      if (err) res.writeHead(404).end()
      else res.writeHead(200, { 'content-type': 'text/javascript' }).end(data)
    })
  } else {
    res.writeHead(404).end()
  }
})
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
const origin = `http://127.0.0.1:${server.address().port}`

// The browser reaches the collector through a proxy that holds every byte from the browser for
// LATENCY_MS before passing it on (a slow uplink, as on a phone), and drops what it holds when
// the browser closes the connection. A request cancelled by its page before LATENCY_MS never
// reaches the collector, as on a real slow network. The collector sees the proxy's address in
// Host, so its settings (no --public-url) send analytics.js through the proxy too.
const LATENCY_MS = 300
const upstreamUrl = new URL(collector)
const proxy = net.createServer((client) => {
  const upstream = net.connect(Number(upstreamUrl.port), upstreamUrl.hostname)
  let open = true
  const later = (f) => setTimeout(() => open && f(), LATENCY_MS)
  client.on('data', (chunk) => later(() => upstream.write(chunk)))
  client.on('end', () => later(() => upstream.end()))
  client.on('close', () => {
    open = false
    upstream.destroy()
  })
  upstream.on('data', (chunk) => client.write(chunk))
  upstream.on('close', () => client.destroy())
  client.on('error', () => {})
  upstream.on('error', () => {})
})
await new Promise((resolve) => proxy.listen(0, '127.0.0.1', resolve))
const cdn = `http://127.0.0.1:${proxy.address().port}`
const collectorOrigin = cdn

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // root in CI containers: Chromium's sandbox needs user namespaces it may not have
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
})
const problems = []

// Records every request a context makes: posts to the collector (their JSON bodies), the
// settings fetch, and anything that leaves the two local origins.
function watch(context) {
  const seen = { posts: [], answered: [], settings: [], scripts: [], foreign: [] }
  context.on('response', (resp) => {
    const req = resp.request()
    if (req.method() === 'POST' && new URL(req.url()).origin === collectorOrigin) {
      seen.answered.push(resp.status())
    }
  })
  context.on('request', (req) => {
    const url = new URL(req.url())
    if (url.origin === collectorOrigin) {
      if (req.method() === 'POST') {
        let body = null
        try {
          body = JSON.parse(req.postData() ?? 'null')
        } catch (e) {
          problems.push(`unparsable body to ${req.url()}: ${e}`)
        }
        seen.posts.push({ path: url.pathname, body })
      } else if (req.method() === 'GET' && url.pathname.endsWith('/settings')) {
        seen.settings.push(url.pathname)
      } else if (req.method() === 'GET') {
        seen.scripts.push(url.pathname)
      }
    } else if (url.origin !== origin && url.protocol !== 'data:' && url.protocol !== 'about:') {
      seen.foreign.push(req.url())
    }
  })
  context.on('page', (p) => {
    p.on('pageerror', (e) => problems.push(`page error: ${e}`))
    p.on('console', (m) => {
      if (m.type() === 'error') seen.consoleErrors = [...(seen.consoleErrors ?? []), m.text()]
    })
  })
  return seen
}

const report = { run, origin, cdn }
let context, wrong
try {
  // 1. The right key: every call type, then a track as the page unloads.
  context = await browser.newContext({ locale: LOCALE })
  const seen = watch(context)
  const tab = await context.newPage()
  const url = `${origin}/shop/cart?key=${encodeURIComponent(writeKey)}&cdn=${encodeURIComponent(cdn)}`
  await tab.goto(url)
  const loaded = await tab.evaluate(() => window.loaded)
  if (loaded !== 'loaded') throw new Error(`analytics.js did not load with the right key: ${loaded}`)
  const userId = `${run}-browser-user`
  const aliasId = `${run}-browser-alias`
  const calls = await tab.evaluate(
    async ({ userId, aliasId, run }) => {
      const [analytics] = await window.analytics
      const out = []
      const done = (ctx) => {
        const failed = ctx.failedDelivery()
        out.push({
          type: ctx.event.type,
          messageId: ctx.event.messageId,
          event: ctx.event.event ?? null,
          failed: failed ? String(failed.reason) : null,
        })
      }
      done(await analytics.identify(userId, { email: 'ada@example.com', plan: 'pro', name: 'Ädä' }))
      done(await analytics.track('Checkout Started', { run, total: 42.5, items: [{ sku: 'ü-1' }] }))
      done(await analytics.page('Shop', 'Cart', { run }))
      done(await analytics.group(`${run}-browser-group`, { name: 'Ørsted', employees: 42 }))
      done(await analytics.alias(aliasId))
      return {
        calls: out,
        userAgent: navigator.userAgent,
        language: navigator.language,
        href: location.href,
        title: document.title,
        anonymousId: analytics.user().anonymousId(),
      }
    },
    { userId, aliasId, run }
  )
  Object.assign(report, calls, { userId, aliasId })
  for (const c of calls.calls) if (c.failed) problems.push(`${c.type} failed: ${c.failed}`)

  // The unload: the track is not awaited, and the page navigates away (to a page without
  // analytics.js, so nothing can resend it from storage) in the very task in which analytics.js
  // hands the track's request to fetch, so the request is in flight as the page unloads. Only a
  // `keepalive` request survives that; a plain one is cancelled with the page.
  const before = seen.posts.length
  await tab.exposeFunction('reportKeepalive', (v) => {
    report.unloadKeepalive = v
  })
  await Promise.all([
    tab.waitForURL('about:blank'),
    tab.evaluate(({ run }) => {
      const realFetch = window.fetch
      window.fetch = function (input, init) {
        const sent = realFetch.apply(this, arguments)
        if (String(input).endsWith('/v1/t') && String(init?.body).includes('"Left Page"')) {
          window.fetch = realFetch
          window.reportKeepalive(String(init?.keepalive))
          location.href = 'about:blank'
        }
        return sent
      }
      window.analytics.track('Left Page', { run })
    }, { run }),
  ])
  const unloadPosts = seen.posts.slice(before)
  report.unload = unloadPosts.map((p) => ({ path: p.path, messageId: p.body?.messageId, event: p.body?.event }))
  report.posts = seen.posts.map((p) => ({ path: p.path, type: p.body?.type, messageId: p.body?.messageId }))
  // What the browser posted, by messageId (the first attempt's body).
  report.bodies = {}
  for (const p of seen.posts) {
    const id = p.body?.messageId
    if (id && !(id in report.bodies)) report.bodies[id] = p.body
  }
  report.settingsRequests = seen.settings
  report.foreign = seen.foreign
  report.consoleErrors = seen.consoleErrors ?? []
  // The context stays open (closing it would cancel keepalive requests too, as quitting the
  // browser would) until the end, after the wrong key's part, which takes seconds.

  // 2. A wrong key: settings are refused, so analytics.js never loads and sends nothing.
  wrong = await browser.newContext({ locale: LOCALE })
  const seenWrong = watch(wrong)
  const tab2 = await wrong.newPage()
  await tab2.goto(`${origin}/shop/cart?key=${encodeURIComponent(wrongKey)}&cdn=${encodeURIComponent(cdn)}`)
  const settingsStatus = await tab2.evaluate(
    async ({ cdn, key }) => (await fetch(`${cdn}/v1/projects/${key}/settings`)).status,
    { cdn, key: wrongKey }
  )
  const wrongLoaded = await tab2.evaluate(() => window.loaded)
  await tab2.evaluate(({ run }) => {
    window.analytics.identify(`${run}-wrong-user`)
    window.analytics.track('Should Not Arrive', { run })
  }, { run })
  await tab2.waitForTimeout(1500)
  report.wrongKey = {
    loaded: wrongLoaded,
    settingsStatus,
    posts: seenWrong.posts.length,
    foreign: seenWrong.foreign,
  }
  await wrong.close()

  // 3. The snippet, with analytics.min.js from the collector: the three calls it queues before
  // the script arrives are sent once it has.
  if (snippet) {
    const snip = await browser.newContext({ locale: LOCALE })
    const seenSnip = watch(snip)
    const tab3 = await snip.newPage()
    const snipUser = `${run}-snippet-user`
    await tab3.goto(`${origin}/shop/snippet?key=${encodeURIComponent(writeKey)}&cdn=${encodeURIComponent(cdn)}&user=${encodeURIComponent(snipUser)}`)
    const deadline = Date.now() + 30000
    const ok = () => seenSnip.answered.filter((s) => s === 200).length
    while (ok() < 3 && Date.now() < deadline) await tab3.waitForTimeout(100)
    report.snippet = {
      userId: snipUser,
      href: tab3.url(),
      posts: seenSnip.posts.map((p) => ({ path: p.path, type: p.body?.type, messageId: p.body?.messageId })),
      bodies: Object.fromEntries(seenSnip.posts.map((p) => [p.body?.messageId, p.body])),
      settingsRequests: seenSnip.settings,
      scripts: seenSnip.scripts,
      foreign: seenSnip.foreign,
    }
    await snip.close()
  }
  await context.close()
} catch (e) {
  problems.push(String(e?.stack ?? e))
} finally {
  await browser.close()
  server.close()
  proxy.close()
}
report.problems = problems
console.log(JSON.stringify(report))
process.exit(problems.length ? 1 : 0)
