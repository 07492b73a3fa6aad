# Copyright 2021 The KubeEdge Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The counting of Sedna's helmet-detection eval (examples/incremental_learning/helmet_detection/
training/validate_utils.py: ``validate``, ``validate_img_file``, ``calc_iou``), verbatim except
that the model's output is passed in instead of computed (``labels``, ``bbox_list_pred`` in
Sedna's ``y1, x1, y2, x2`` order) and images, drawing and timing are left out."""

# flake8: noqa


def validate(test_dataset, predictions, class_names):
    class_num = len(class_names)
    count_correct = [1e-6 for ix in range(class_num)]
    count_ground = [1e-6 for ix in range(class_num)]
    count_pred = [1e-6 for ix in range(class_num)]

    for line, (labels, bbox_list_pred) in zip(test_dataset, predictions):
        line = line.strip()
        if not line:
            continue

        pos = line.find(' ')
        if pos == -1:
            continue

        bbox_list_ground = line[pos + 1:].split(' ')
        correct, pred, ground = validate_img_file(
            labels, bbox_list_pred, bbox_list_ground, class_names
        )

        count_correct = [count_correct[ix] + correct[ix]
                         for ix in range(class_num)]
        count_pred = [count_pred[ix] + pred[ix] for ix in range(class_num)]
        count_ground = [count_ground[ix] + ground[ix]
                        for ix in range(class_num)]

    precision = [float(count_correct[ix]) / float(count_pred[ix])
                 for ix in range(class_num)]
    recall = [float(count_correct[ix]) / float(count_ground[ix])
              for ix in range(class_num)]

    all_precisions = sum(count_correct) / sum(count_pred)
    all_recalls = sum(count_correct) / sum(count_ground)
    return precision, recall, all_precisions, all_recalls


def validate_img_file(labels, bbox_list_pred, bbox_list_ground, class_names):
    class_num = len(class_names)
    count_correct = [0 for ix in range(class_num)]
    count_ground = [0 for ix in range(class_num)]
    count_pred = [0 for ix in range(class_num)]

    count_ground_all = len(bbox_list_ground)
    count_pred_all = len(bbox_list_pred)

    for ix in range(count_ground_all):
        class_ground = int(bbox_list_ground[ix].split(',')[4])
        count_ground[class_ground] += 1

    for iy in range(count_pred_all):
        bbox_pred = [
            bbox_list_pred[iy][1],
            bbox_list_pred[iy][0],
            bbox_list_pred[iy][3],
            bbox_list_pred[iy][2]]

        count_pred[labels[iy]] += 1
        for ix in range(count_ground_all):
            bbox_ground = [int(x) for x in bbox_list_ground[ix].split(',')]
            class_ground = bbox_ground[4]

            if labels[iy] == class_ground:
                iou = calc_iou(bbox_pred, bbox_ground)
                if iou >= 0.5:
                    count_correct[class_ground] += 1
                    break

    return count_correct, count_pred, count_ground


def calc_iou(bbox_pred, bbox_ground):
    x1 = bbox_pred[0]
    y1 = bbox_pred[1]
    width1 = bbox_pred[2] - bbox_pred[0]
    height1 = bbox_pred[3] - bbox_pred[1]

    x2 = bbox_ground[0]
    y2 = bbox_ground[1]
    width2 = bbox_ground[2] - bbox_ground[0]
    height2 = bbox_ground[3] - bbox_ground[1]

    endx = max(x1 + width1, x2 + width2)
    startx = min(x1, x2)
    width = width1 + width2 - (endx - startx)

    endy = max(y1 + height1, y2 + height2)
    starty = min(y1, y2)
    height = height1 + height2 - (endy - starty)

    if width <= 0 or height <= 0:
        iou = 0
    else:
        area = width * height
        area1 = width1 * height1
        area2 = width2 * height2
        iou = area * 1. / (area1 + area2 - area)

    return iou
