async () => {
  // Every plotly figure in the visible tab, redrawn to PNG by plotly.js (served with the app) and stacked.
  const panels = [...document.querySelectorAll('#tabs [role="tabpanel"]')].filter(p => p.offsetParent !== null);
  const plots = [...(panels[0] || document).querySelectorAll('.js-plotly-plot')].filter(p => p.offsetParent !== null);
  if (!window.Plotly || !plots.length) { alert('No figures to save yet: analyze a prompt first.'); return; }
  const images = [];
  for (const gd of plots) {
    const w = Math.max(gd.offsetWidth, 300), h = Math.max(gd.offsetHeight, 200);
    const url = await window.Plotly.toImage({data: gd.data, layout: gd.layout}, {format: 'png', width: w, height: h});
    const img = new Image();
    await new Promise((ok, bad) => { img.onload = ok; img.onerror = bad; img.src = url; });
    images.push(img);
  }
  // two columns when the tab shows gpt-oss and GPT-2 side by side: keep the on-screen arrangement
  const rects = plots.map(p => p.getBoundingClientRect());
  const left = Math.min(...rects.map(r => r.left)), top = Math.min(...rects.map(r => r.top));
  const width = Math.max(...rects.map(r => r.right)) - left, height = Math.max(...rects.map(r => r.bottom)) - top;
  const canvas = document.createElement('canvas');
  canvas.width = Math.ceil(width); canvas.height = Math.ceil(height);
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = 'white'; ctx.fillRect(0, 0, canvas.width, canvas.height);
  images.forEach((img, i) => ctx.drawImage(img, rects[i].left - left, rects[i].top - top, rects[i].width, rects[i].height));
  const a = document.createElement('a');
  a.download = 'gptoss-viz-tab.png';
  a.href = canvas.toDataURL('image/png');
  document.body.appendChild(a); a.click(); a.remove();
}
