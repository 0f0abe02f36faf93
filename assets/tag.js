/* rotator ad tag (served at /v1/tag.js).
 *
 * <script async src="https://ADS/v1/tag.js"></script>
 * <div data-rotator-placement="top-banner"></div>
 *
 * Finds every such slot (also slots added to the page later), asks ADS for all of them in one
 * POST /v1/decisions, and renders each ad inside a sandboxed iframe whose sandbox never includes
 * allow-same-origin: a creative runs in an opaque origin and can never read the publisher's page.
 * Each ad fires its impression_url once, when its frame has loaded (the ad rendered), and its
 * viewable_url once, when at least 50 % of it was visible for 1 s without interruption (the MRC
 * display viewability rule).
 *
 * Beacons go through fetch(keepalive, no-cors) rather than navigator.sendBeacon: the tracking
 * URLs take GET (sendBeacon can only POST), and keepalive lets a beacon outlive the page as
 * sendBeacon's would.
 */
(function () {
  'use strict';

  var SANDBOX = 'allow-scripts allow-popups allow-popups-to-escape-sandbox ' +
    'allow-top-navigation-by-user-activation';
  var STATE = 'data-rotator-state';

  var me = document.currentScript ||
    document.querySelector('script[src$="/v1/tag.js"]');
  if (!me || !window.fetch) return;
  var origin = new URL(me.src, location.href).origin;
  var generated = 0;
  var queued = false;

  function esc(s) {
    return String(s == null ? '' : s).replace(/[&<>"']/g, function (c) {
      return '&#' + c.charCodeAt(0) + ';';
    });
  }

  function beacon(url) {
    if (typeof url !== 'string' || !/^https?:\/\//.test(url)) return;
    fetch(url, { keepalive: true, mode: 'no-cors', credentials: 'omit', cache: 'no-store' })
      .catch(function () {});
  }

  var HEAD = '<!doctype html><meta charset="utf-8"><base target="_top"><style>' +
    'html,body{margin:0;padding:0;overflow:hidden}img{display:block;border:0}' +
    'a.t{display:block;padding:4px;font:14px/1.3 sans-serif}</style>';

  /* The frame's document. Creative fields are escaped, except an html creative, which is the
   * document itself: it runs inside the sandbox, like any third-party ad. */
  function frameDoc(d) {
    var a = '<a href="' + esc(d.click_url) + '" target="_top" rel="noopener"';
    if (d.kind === 'image') {
      return HEAD + a + '><img src="' + esc(d.image_url) + '" alt="' + esc(d.alt) +
        '" width="' + esc(d.width) + '" height="' + esc(d.height) + '"></a>';
    }
    if (d.kind === 'html') return HEAD + String(d.html == null ? '' : d.html);
    return HEAD + a + ' class="t">' + esc(d.text) + '</a>';
  }

  /* Calls fn once, when at least half of el has been in view for 1 s in a visible tab. */
  function whenViewable(el, fn) {
    if (!window.IntersectionObserver) return;
    var timer = null;
    var inView = false;
    function arm() {
      if (timer === null && inView && document.visibilityState === 'visible') {
        timer = setTimeout(done, 1000);
      }
    }
    function disarm() {
      if (timer !== null) clearTimeout(timer);
      timer = null;
    }
    function done() {
      io.disconnect();
      document.removeEventListener('visibilitychange', onVisibility);
      fn();
    }
    function onVisibility() {
      if (document.visibilityState === 'visible') arm(); else disarm();
    }
    var io = new IntersectionObserver(function (entries) {
      var e = entries[entries.length - 1];
      inView = e.isIntersecting && e.intersectionRatio >= 0.5;
      if (inView) arm(); else disarm();
    }, { threshold: [0, 0.5, 1] });
    io.observe(el);
    document.addEventListener('visibilitychange', onVisibility);
  }

  function render(slot, d) {
    if (!d || typeof d !== 'object') {
      slot.setAttribute(STATE, 'empty');
      return;
    }
    var f = document.createElement('iframe');
    f.setAttribute('sandbox', SANDBOX);
    f.setAttribute('title', 'Advertisement');
    f.setAttribute('scrolling', 'no');
    f.setAttribute('frameborder', '0');
    f.style.border = '0';
    f.style.display = 'block';
    var w = Number(d.width) || 0;
    var h = Number(d.height) || 0;
    f.style.width = w > 0 ? w + 'px' : '100%';
    f.style.height = (h > 0 ? h : 40) + 'px';
    if (w > 0) f.width = String(w);
    if (h > 0) f.height = String(h);
    var fired = false;
    f.addEventListener('load', function () {
      if (fired) return;
      fired = true;
      slot.setAttribute(STATE, 'rendered');
      beacon(d.impression_url);
      if (d.viewable_url) whenViewable(f, function () { beacon(d.viewable_url); });
    });
    f.srcdoc = frameDoc(d);
    while (slot.firstChild) slot.removeChild(slot.firstChild);
    slot.appendChild(f);
  }

  function run() {
    queued = false;
    var slots = {};
    var asked = [];
    var found = document.querySelectorAll('div[data-rotator-placement]:not([' + STATE + '])');
    for (var i = 0; i < found.length; i++) {
      var el = found[i];
      var key = el.id;
      if (!key || slots[key]) {
        do { key = 'rotator-slot-' + (++generated); } while (slots[key] || document.getElementById(key));
      }
      slots[key] = el;
      el.setAttribute(STATE, 'asking');
      asked.push({ div: key, placement: el.getAttribute('data-rotator-placement') });
    }
    if (!asked.length) return;
    fetch(origin + '/v1/decisions', {
      method: 'POST',
      mode: 'cors',
      /* The identity cookie of frequency caps (first-party to rotator's host). */
      credentials: 'include',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ placements: asked, url: location.href, referrer: document.referrer })
    }).then(function (r) {
      if (!r.ok) throw new Error('rotator: decisions answered ' + r.status);
      return r.json();
    }).then(function (body) {
      var decisions = (body && body.decisions) || {};
      Object.keys(slots).forEach(function (k) {
        render(slots[k], Object.prototype.hasOwnProperty.call(decisions, k) ? decisions[k] : null);
      });
    }).catch(function (e) {
      Object.keys(slots).forEach(function (k) { slots[k].setAttribute(STATE, 'error'); });
      if (window.console) console.warn(e);
    });
  }

  function schedule() {
    if (queued) return;
    queued = true;
    setTimeout(run, 0);
  }

  function start() {
    run();
    if (window.MutationObserver) {
      new MutationObserver(schedule).observe(document.documentElement, { childList: true, subtree: true });
    }
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
})();
