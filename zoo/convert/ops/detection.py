"""Detection post-processing: NonMaxSuppression and RoiAlign, as explicit code with ONNX's exact rules.

torchvision.ops has both, but generated code imports torch alone, and ONNX's rules differ in places
(flipped corners, a score threshold, a per-class limit, samples outside the map).
"""
from __future__ import annotations

from ..checks import Contradiction
from ..registry import register_op

NMS = '''
def non_max_suppression(boxes, scores, max_per_class=None, iou_threshold=None, score_threshold=None,
                        center_point_box=False):
    # ONNX NonMaxSuppression: per batch and class, greedy by descending score; a box whose IoU with a kept
    # one exceeds the threshold is dropped. Rows of the result: (batch, class, box).
    limit = 0 if max_per_class is None else int(max_per_class)
    iou_limit = 0.0 if iou_threshold is None else float(iou_threshold)
    if center_point_box:
        boxes = torch.cat([boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2], -1)
    lo, hi = torch.minimum(boxes[..., :2], boxes[..., 2:]), torch.maximum(boxes[..., :2], boxes[..., 2:])
    area = (hi - lo).prod(-1)
    selected = []
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            order = torch.argsort(scores[b, c], descending=True, stable=True)
            if score_threshold is not None:
                order = order[scores[b, c][order] > float(score_threshold)]
            keep = []
            for i in order.tolist():
                if len(keep) >= limit:
                    break
                if keep:
                    k = torch.tensor(keep, device=boxes.device)
                    overlap = torch.minimum(hi[b, i], hi[b, k]) - torch.maximum(lo[b, i], lo[b, k])
                    inter = overlap.clamp(min=0).prod(-1)
                    union = area[b, i] + area[b, k] - inter
                    iou = torch.where(union > 0, inter / union, torch.zeros_like(union))
                    if bool((iou > iou_limit).any()):
                        continue
                keep.append(i)
            selected += [[b, c, i] for i in keep]
    return torch.tensor(selected, dtype=torch.int64, device=boxes.device).reshape(-1, 3)
'''


@register_op("NonMaxSuppression", since=10)
def non_max_suppression(ctx):
    fn = ctx.helper("non_max_suppression", NMS)
    args = [ctx.x(0), ctx.x(1)]
    for i, name in ((2, "max_per_class"), (3, "iou_threshold"), (4, "score_threshold")):
        if ctx.has_input(i):
            args.append(f"{name}={ctx.x(i)}")
    if ctx.attr("center_point_box", 0):
        args.append("center_point_box=True")
    return f"{fn}({', '.join(args)})"


ROI_ALIGN = '''
def roi_align(x, rois, batch_indices, out_h, out_w, sampling_ratio, spatial_scale, half_pixel, max_mode=False):
    # ONNX RoiAlign: each output bin averages bilinear samples on a regular grid; a sample more than one pixel
    # outside the map counts as 0. Max mode (as the ONNX reference) takes, per sample, the largest of the four
    # weighted neighbours rather than their sum, and the largest sample of the bin.
    height, width = x.shape[2], x.shape[3]
    offset = 0.5 if half_pixel else 0.0
    out = []
    for r in range(rois.shape[0]):
        x1, y1, x2, y2 = (rois[r] * spatial_scale - offset).tolist()
        roi_w, roi_h = x2 - x1, y2 - y1
        if not half_pixel:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        grid_h = sampling_ratio if sampling_ratio > 0 else max(int(-(-roi_h // out_h)), 1)
        grid_w = sampling_ratio if sampling_ratio > 0 else max(int(-(-roi_w // out_w)), 1)
        ys = y1 + (torch.arange(out_h * grid_h, device=x.device, dtype=x.dtype) + 0.5) * (roi_h / out_h / grid_h)
        xs = x1 + (torch.arange(out_w * grid_w, device=x.device, dtype=x.dtype) + 0.5) * (roi_w / out_w / grid_w)
        (y0, y1_, wy0, wy1), (x0, x1_, wx0, wx1) = _bilinear_axis(ys, height), _bilinear_axis(xs, width)
        feat = x[int(batch_indices[r])]
        terms = [feat[:, yi][:, :, xi] * (wy[:, None] * wx[None, :])
                 for yi, wy in ((y0, wy0), (y1_, wy1)) for xi, wx in ((x0, wx0), (x1_, wx1))]
        if max_mode:
            out.append(torch.stack(terms).amax(0).reshape(-1, out_h, grid_h, out_w, grid_w).amax((2, 4)))
        else:
            out.append(sum(terms).reshape(-1, out_h, grid_h, out_w, grid_w).mean((2, 4)))
    return torch.stack(out) if out else x.new_zeros((0, x.shape[1], out_h, out_w))


def _bilinear_axis(pos, size):
    # Low and high neighbours and their weights along one axis, with RoiAlign's border rules.
    outside = (pos < -1.0) | (pos > size)
    pos = pos.clamp(min=0.0)
    low = pos.floor().long().clamp(max=size - 1)
    at_end = low >= size - 1
    high = torch.where(at_end, low, low + 1)
    pos = torch.where(at_end, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)
    keep = (~outside).to(pos.dtype)
    return low, high, (1 - frac) * keep, frac * keep
'''


@register_op("RoiAlign", since=10)
def roi_align(ctx):
    mode = ctx.attr("mode", "avg")
    if mode not in ("avg", "max"):
        raise Contradiction(f"attribute mode={mode!r} is not 'avg' or 'max'")
    half_pixel = ctx.opset >= 16 and ctx.attr("coordinate_transformation_mode", "half_pixel") == "half_pixel"
    fn = ctx.helper("roi_align", ROI_ALIGN)
    return (f"{fn}({ctx.x(0)}, {ctx.x(1)}, {ctx.x(2)}, {int(ctx.attr('output_height', 1))}, "
            f"{int(ctx.attr('output_width', 1))}, {int(ctx.attr('sampling_ratio', 0))}, "
            f"{ctx.lit(float(ctx.attr('spatial_scale', 1.0)))}, {half_pixel}"
            + (", max_mode=True)" if mode == "max" else ")"))
