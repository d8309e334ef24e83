"""gpu_report's page: the Markdown, and the checks that do not trust the timers alone.

Everything here is plain arithmetic on what the report measured (v2.tools.gpu_report's
Part records), so that the page can be written after every part and tested without a
GPU: the card's peak rate for a precision, the share of it a row reached, the NVIDIA
driver the wheel's CUDA needs, and the projected time of the paper's ResNet-110 run.
"""

import re
import statistics

PAPER_ITERATIONS = 64000           # He et al. 2015, section 4.2: 64k iterations at batch 128

# Dense peak TFLOP/s by card, from NVIDIA's data sheets (tensor cores, no sparsity); 'tf32'
# is float32 matrix work with TF32 on, TensorFlow's default on Ampere and later. The first
# pattern that matches the device name wins, so the more specific names come first.
PEAK_TFLOPS = (
    (r'H100.*PCIe', {'bfloat16': 756, 'float16': 756, 'tf32': 378, 'float32': 51}),
    (r'H100|H200|GH200', {'bfloat16': 989, 'float16': 989, 'tf32': 495, 'float32': 67}),
    (r'A100', {'bfloat16': 312, 'float16': 312, 'tf32': 156, 'float32': 19.5}),
    (r'L40S', {'bfloat16': 362, 'float16': 362, 'tf32': 183, 'float32': 91.6}),
    (r'\bL4\b', {'bfloat16': 121, 'float16': 121, 'tf32': 60, 'float32': 30.3}),
    (r'\bA10\b', {'bfloat16': 125, 'float16': 125, 'tf32': 62.5, 'float32': 31.2}),
    (r'V100', {'float16': 125, 'float32': 15.7}),
    (r'\bT4\b', {'float16': 65, 'float32': 8.1}),
)

# The oldest Linux driver of each CUDA release (NVIDIA's CUDA toolkit release notes): a
# driver older than the wheel's CUDA cannot compile that CUDA's PTX.
CUDA_DRIVERS = {'12.0': '525.60.13', '12.1': '530.30.02', '12.2': '535.54.03',
                '12.3': '545.23.06', '12.4': '550.54.14', '12.5': '555.42.02',
                '12.6': '560.28.03', '12.8': '570.26', '12.9': '575.51.03'}

BELOW_PEAK_SHARE = 0.01            # a rate under 1% of the card's peak is flagged


def peak_tflops(device_name: str, computed: str, tf32: bool) -> float | None:
    """The card's dense peak for this compute dtype, or None where the card is not known."""
    key = 'tf32' if computed == 'float32' and tf32 else computed
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, device_name or ''):
            return peaks.get(key)
    return None


def flops_check(images_per_second, flops_per_image, peak):
    """(achieved TFLOP/s, share of the peak or None, a warning or '') of one row."""
    achieved = images_per_second * flops_per_image / 1e12
    if not peak:
        return achieved, None, ''
    share = achieved / peak
    if share > 1:
        return achieved, share, 'above the card\'s peak: a timing error'
    if share < BELOW_PEAK_SHARE:
        return achieved, share, 'under 1% of the card\'s peak'
    return achieved, share, ''


def version(text):
    return tuple(int(n) for n in re.findall(r'\d+', text or ''))


def driver_floor(cuda_version: str) -> str | None:
    """The oldest driver for the wheel's CUDA (its major.minor), or None if not listed."""
    return CUDA_DRIVERS.get('.'.join((cuda_version or '').split('.')[:2]))


def compile_warnings(compute_capability, built_for, cuda_version, driver):
    """Warning lines for a card the wheel carries no machine code (SASS) for.

    TensorFlow's own kernels (those outside XLA, cuDNN and cuBLAS) then come as PTX that
    the driver compiles at first use, which TensorFlow warns can take up to 30 minutes
    (the CUDA cache keeps the result for later runs); a driver older than the CUDA the
    wheel was built with cannot compile that PTX at all.
    """
    if not compute_capability:
        return []
    major, minor = compute_capability[:2]
    sm = 'sm_%d%d' % (major, minor)
    # Machine code runs on the cards of its major version and an equal or later minor one.
    for code in built_for or []:
        found = re.fullmatch(r'sm_(\d+)(\d)', code)
        if found and int(found.group(1)) == major and int(found.group(2)) <= minor:
            return []
    lines = ['warning: the wheel has no machine code for %s (it carries %s): the driver '
             'compiles TensorFlow\'s own kernels from PTX at first use (up to 30 minutes, '
             'TensorFlow warns; the CUDA cache keeps them for later runs), so the cold start '
             'below includes that compile' % (sm, ' '.join(built_for or []) or 'nothing')]
    floor = driver_floor(cuda_version)
    if driver and floor and version(driver) < version(floor):
        lines.append('warning: driver %s is older than %s, the first of CUDA %s, the CUDA this '
                     'TensorFlow was built with: it cannot compile the wheel\'s PTX, and '
                     'kernels outside XLA, cuDNN and cuBLAS will fail; update the driver'
                     % (driver, floor, cuda_version))
    return lines


def projected_hours(images_per_second, save_seconds, batch=128, iterations=PAPER_ITERATIONS,
                    save_every=1000):
    """Hours of a run: its steps at this rate, plus one save every save_every steps."""
    return (iterations * batch / images_per_second
            + iterations // save_every * save_seconds) / 3600


def _median(part):
    rates = (part.result or {}).get('rates') or []
    return statistics.median(rates) if rates else None


def _calls(n):
    return '%d step%s a call' % (n, '' if n == 1 else 's')


def _net(part):
    return 'ResNet-%d' % part.args['depth']


def _figure(value, form='%.0f'):
    return form % value if value is not None else '-'


def _smi(part):
    s = part.smi
    if not s:
        return '-'
    return '%s%% (max %s%%), %s MiB' % (_figure(s.get('util_mean')), _figure(s.get('util_max')),
                                        _figure(s.get('memory_max')))


def row_cells(part, device_name):
    """The cells of one trainer row of the speed table (a part that ran)."""
    r = part.result
    rate = _median(part)
    achieved, share, warning = flops_check(rate, r['train_flops'],
                                           peak_tflops(device_name, r['computed'], r['tf32']))
    checks = [warning] if warning else []
    if r['computed'] != part.args['precision']:
        checks.append('asked %s, computed %s' % (part.args['precision'], r['computed']))
    computed = r['computed'] + (' (TF32)' if r['computed'] == 'float32' and r['tf32'] else '')
    return [_net(part), computed, 'on' if r['xla'] else 'off', str(part.args['steps_per_call']),
            '%.0f' % rate, '%.0f-%.0f' % (min(r['rates']), max(r['rates'])),
            '%.3g' % achieved, '%.1f%%' % (100 * share) if share is not None else '-',
            _figure(r.get('peak_mib')), _smi(part), '; '.join(checks) or 'ok']


def table(header, rows, right=()):
    """A Markdown table; the columns at the indices `right` (figures) are right-aligned."""
    lines = ['| %s |' % ' | '.join(header),
             '|%s|' % '|'.join('---:' if i in right else '---' for i in range(len(header)))]
    return lines + ['| %s |' % ' | '.join(str(c).replace('|', '/') for c in row) for row in rows]


def status_line(part):
    if part.status == 'done':
        return 'done in %.0f s' % part.seconds
    return '%s: %s' % (part.status, part.why) if part.why else part.status


def markdown(report) -> str:
    """The page of a report (finished or not): what was measured, and why the rest was not."""
    parts = report.parts
    device = next((p for p in parts if p.kind == 'device' and p.status == 'done'), None)
    name = device.result['name'] if device else report.title
    lines = ['# %s' % report.title, '',
             'Written by `%s` on %s, %s.' % (report.command, report.date, report.progress()), '']
    if report.rehearsal:
        lines += ['A rehearsal on the CPU at toy sizes (small nets, few steps): it runs the plan, '
                  'the deadline, the page and the signals of the GPU report, and its figures are '
                  'not GPU figures.', '']
    lines += ['## The machine', ''] + ['- %s' % line for line in report.header] + ['']
    headline = _headline(parts)
    if headline:
        lines += ['**%s**' % headline, '']
    lines += ['## Cold start', '']
    if device:
        r = device.result
        lines += table(['what', 'seconds'], [
            ['start a worker process (Python, import TensorFlow, set up the device)',
             '%.1f' % report.worker_start_s if report.worker_start_s else '-'],
            ['first op on the device (a 1024x1024 matmul)', '%.2f' % r['first_op_s']],
            ['first step, XLA off (traced; TensorFlow\'s kernels loaded)',
             '%.2f' % r['plain_steps_s'][0]],
            ['second step, XLA off', '%.3f' % r['plain_steps_s'][1]],
            ['first step, XLA on (traced and compiled)', '%.2f' % r['xla_steps_s'][0]],
            ['second step, XLA on', '%.3f' % r['xla_steps_s'][1]]], right=(1,))
        lines += ['', 'Of ResNet-%d at batch %d in %s, on %s.' % (
            device.args['depth'], device.args['batch'], r['computed'], ', '.join(r['devices']))]
    else:
        lines.append('Not measured (%s).' % status_line(parts[0]))
    lines += ['', '## Training speed', '', report.timing_note, '']
    ran = [p for p in parts if p.kind == 'row' and p.status == 'done']
    lines += table(['network', 'computed', 'XLA', 'steps/call', 'img/s', 'min-max', 'TFLOP/s',
                    'of peak', 'GPU peak MiB', 'nvidia-smi util, memory', 'checks'],
                   [row_cells(p, name) for p in ran], right=(3, 4, 5, 6, 7, 8))
    if ran and ran[0].result.get('first_line'):
        lines += ['', 'The trainer\'s own first line in the %s row: `%s`' % (
            ran[0].title, ran[0].result['first_line'].replace('`', "'"))]
    lines += ['', 'TFLOP/s counts 6 FLOPs per multiply-add of the forward pass (x2 per '
              'multiply-add, x3 for forward and backward); the peak is the card\'s dense peak '
              'for the computed precision from NVIDIA\'s data sheet (`-` where the card is not '
              'known). GPU peak MiB is TensorFlow\'s allocator peak during the row '
              '(`tf.config.experimental.get_memory_info`); nvidia-smi\'s figures are the whole '
              'card\'s, sampled while the row ran.', '']
    keras = [p for p in parts if p.kind == 'keras' and p.status == 'done']
    if keras:
        lines += ['Keras 3 `model.fit` of the same net (uint8 batches augmented by Keras layers '
                  'inside the model, Keras\'s own XLA choice), beside the trainer\'s best row at '
                  'the same depth and computed precision:', '']
        rows = []
        for p in keras:
            ours = [_median(q) for q in ran if q.args['depth'] == p.args['depth']
                    and q.result['computed'] == p.result['computed']]
            rate = _median(p)
            rows.append([_net(p), p.result['computed'], 'on' if p.result['xla'] else 'off',
                         '%.0f' % rate, _figure(max(ours) if ours else None),
                         '%.2fx' % (max(ours) / rate) if ours else '-'])
        lines += table(['network', 'computed', 'XLA', 'Keras img/s', 'trainer img/s',
                        'trainer / Keras'], rows, right=(3, 4, 5)) + ['']
    lines += ['## The GPU during a step', '']
    profiled = [p for p in ran if p.result.get('profiled')]
    for p in profiled:
        busy = p.result.get('busy')
        lines.append('- %s, %s, XLA %s, %s, one host read every %d steps: busy '
                     '%s' % (_net(p), p.result['computed'], 'on' if p.result['xla'] else 'off',
                             _calls(p.args['steps_per_call']), p.args['timing'][2],
                             '%.0f%% (kernel time over the span from the first kernel to the '
                             'last)' % (100 * busy)
                             if busy is not None else 'not measured (%s)' % (
                                 p.result.get('profile_error')
                                 or 'no GPU kernels in the profiler trace')))
    if not profiled:
        lines.append('Not measured.')
    lines += ['', '## The paper\'s ResNet-110 run', '']
    lines.append(_projection(parts) or 'Not measured.')
    lines += ['', '## The GPU tier', '']
    tier = next((p for p in parts if p.kind == 'gpu_tier'), None)
    if tier and tier.result:
        lines.append('`python -m pytest -m gpu`%s: %s' % (
            ' (its slowest tests skipped: %s)' % tier.result['short'] if tier.result['short']
            else '', tier.result['closing']))
        if tier.result['failures']:
            lines += [''] + ['- %s' % line for line in tier.result['failures']]
    else:
        lines.append('Not run: %s.' % (tier.why or tier.status if tier else 'not planned'))
    lines += ['', '## Every part', '']
    lines += table(['part', 'status'], [[p.title, status_line(p)] for p in parts])
    return '\n'.join(lines).rstrip('\n') + '\n'


def _best_110(parts):
    rows = [p for p in parts if p.kind == 'row' and p.status == 'done'
            and p.args['depth'] == max(q.args['depth'] for q in parts if q.kind == 'row')]
    return max(rows, key=_median, default=None)


def _projection(parts):
    best = _best_110(parts)
    if not best:
        return ''
    save = next((p for p in parts if p.kind == 'save' and p.status == 'done'), None)
    seconds = save.result['seconds'] if save else 0.0
    rate = _median(best)
    return ('%s at %.0f img/s (%s, XLA %s, %s): the paper\'s %s iterations of '
            'batch %d take %.2f hours%s.' % (
                _net(best), rate, best.result['computed'], 'on' if best.result['xla'] else 'off',
                _calls(best.args['steps_per_call']), format(PAPER_ITERATIONS, ','),
                best.args['batch'],
                projected_hours(rate, seconds, best.args['batch']),
                ', with a save every 1,000 steps (%.2f s each)' % seconds if save
                else ' (saves not measured)'))


def _headline(parts):
    text = _projection(parts)
    return text and 'Headline: ' + text
