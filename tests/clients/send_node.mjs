// Sends every Segment call type with @segment/analytics-node to a collector.
//
// usage: node send_node.mjs HOST WRITE_KEY RUN_ID [COUNT]
//
// The client builds its URL with `new URL(path, host)`, so HOST is scheme://host:port.
// Prints one JSON line per call on stdout with the fields the collector must store unchanged,
// matched on userId. Exits 1 if the client reported any delivery error.
import { Analytics } from '@segment/analytics-node'

const [host, writeKey, run, countArg] = process.argv.slice(2)
const count = Number(countArg ?? 100)
const errors = []
const analytics = new Analytics({ writeKey, host, flushAt: 20, flushInterval: 200, maxRetries: 10 })
analytics.on('error', (err) => errors.push(String(err?.reason ?? err?.message ?? err)))

const expected = []
const expect = (type, userId, fields) => expected.push({ type, userId, expect: fields })
const uid = (name) => `${run}-node-${name}`

const when = new Date(Date.UTC(2022, 6, 8, 9, 10, 11, 120))
const big = {
  max_safe: Number.MAX_SAFE_INTEGER,
  min_safe: Number.MIN_SAFE_INTEGER,
  max_double: 1.7976931348623157e308,
  min_subnormal: 5e-324,
  tenth: 0.1,
  negative: -123456789012,
}
const nested = {
  order: { id: 'o-2', items: [{ sku: 'ü-2', qty: 1, tags: ['b', 'ñ', '中文'] }, { sku: 'y', qty: null }] },
  emoji: '🎉', rtl: 'مرحبا', empty: {}, list: [], flag: false,
}
const context = { app: { name: 'Ünïcode Node', version: '3.2.1' }, locale: 'fr-FR', campaign: { source: 'node' } }

let u = uid('identify')
analytics.identify({ userId: u, traits: { email: 'grace@example.com', nested }, context, timestamp: when })
expect('identify', u, { traits: { email: 'grace@example.com', nested }, context, timestamp: when.toISOString() })

u = uid('track')
analytics.track({ userId: u, anonymousId: 'anon-node-1', event: 'Checkout Started ✓', properties: { big, nested }, context, timestamp: when })
expect('track', u, { event: 'Checkout Started ✓', anonymousId: 'anon-node-1', properties: { big, nested }, context, timestamp: when.toISOString() })

u = uid('page')
analytics.page({ userId: u, category: 'Shop', name: 'Cart', properties: { path: '/cart/ñ', title: 'Cart' } })
expect('page', u, { name: 'Cart', category: 'Shop' })

u = uid('screen')
analytics.screen({ userId: u, name: 'Settings', properties: { dark: true } })
expect('screen', u, { name: 'Settings' })

u = uid('group')
analytics.group({ userId: u, groupId: 'grp-ø-2', traits: { name: 'Ørsted', employees: 42 } })
expect('group', u, { groupId: 'grp-ø-2', traits: { name: 'Ørsted', employees: 42 } })

u = uid('alias')
analytics.alias({ userId: u, previousId: `${run}-node-previous` })
expect('alias', u, { previousId: `${run}-node-previous` })

for (let i = 0; i < count; i++) {
  u = uid(`bulk-${i}`)
  analytics.track({ userId: u, event: 'Bulk Event', properties: { i, text: 'ünïcödé '.repeat(i % 5) } })
  expect('track', u, { event: 'Bulk Event', properties: { i, text: 'ünïcödé '.repeat(i % 5) } })
}

await analytics.closeAndFlush({ timeout: 60000 })
for (const e of expected) console.log(JSON.stringify(e))
if (errors.length > 0) {
  console.error(`delivery errors: ${errors.join('; ')}`)
  process.exit(1)
}
